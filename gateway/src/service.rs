//! The request path, readable top to bottom: parse the target → decide (allow, then route)
//! → connect (direct or through a parent) → relay (tunnel or forward) → audit. Errors from
//! every step become a response in one place ([`GatewayError::respond`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{Method, Request, Response, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use passerelle_config::{
    ClientInfo, Decision, DenyReason, Flow, Host, Kind, PageLanguage, Route, Target,
};
use tokio::net::TcpStream;

use crate::audit::Recorder;
use crate::body::{empty, Body, Counted, Direction};
use crate::connect::Hop;
use crate::connect::{connect_any, resolve};
use crate::error::{exchange_error, GatewayError};
use crate::headers::{add_via, has_our_via, strip_hop_by_hop};
use crate::limits::Admitted;
use crate::pages::{self, Page};
use crate::record::{Lang, Reason};
use crate::relay::{self, Side};
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

/// One request on `conn`.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Connection,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let runtime = shared.runtime.load_full();
    let record = shared.audit.start(conn.client, req.method().as_str()).await;
    let has_body = !req.body().is_end_stream();
    let default_lang = match runtime.config.pages.language {
        PageLanguage::Fr => Lang::Fr,
        PageLanguage::En => Lang::En,
    };
    let (lang, html) = pages::negotiate(req.headers(), default_lang);
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let mut response = match proxy(&shared, &runtime, &conn, req, &record).await {
        Ok(response) => response,
        Err(error) => {
            conn.mark.set(None);
            let reason = error.reason();
            let detail = error.to_string();
            let refused = error.status() == http::StatusCode::FORBIDDEN;
            match &error {
                GatewayError::Denied { reason: why, .. } => {
                    record.deny(reason, detail.clone(), why.flow())
                }
                // Refused by policy after the decision (a name resolving inside): a refusal.
                _ if refused => record.deny(reason, detail.clone(), None),
                _ => record.fail(reason, detail.clone()),
            }
            let what = format!("{method} {uri:.300}");
            let mut response = error.respond(&Page {
                what: &what,
                reason,
                detail: &detail,
                id: record.id(),
                client: conn.client.ip(),
                contact: &runtime.config.pages.contact,
                lang,
                html,
                refused,
            });
            // The body may be unread: the connection cannot carry another request.
            if has_body {
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            response
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
    let policy = &runtime.config.policy;
    let client = ClientInfo { addr: conn.client };
    let max_uri = runtime.config.limits.max_uri_bytes;
    let target = request_target(&req, max_uri, conn.within.as_ref());
    if let Ok(target) = &target {
        record.target(target, scheme(target), path(&req));
    }
    admit(runtime, &client, &req, target.as_ref().ok())?;
    let target = target?;
    if has_our_via(req.headers(), &runtime.config.listen.via) {
        return Err(GatewayError::Loop(runtime.config.listen.via.clone()));
    }
    let (flow, route) = match policy.decide(&client, &target) {
        Decision::Allow { flow, route } => (flow, route),
        Decision::Deny(reason) => {
            return Err(GatewayError::Denied {
                what: describe(&req, &target),
                reason,
            })
        }
    };
    record.allow(&flow.id, route);
    conn.mark.set(flow.dscp);
    match target.kind {
        Kind::Connect if flow.http_ports.contains(&target.port) => {
            http_inside(shared, conn, req, target, record)
        }
        Kind::Connect => {
            let slot = conn.slot.clone();
            tunnel(shared, runtime, slot, req, &target, &flow, route, record).await
        }
        Kind::Forward => forward(shared, runtime, req, &target, &flow, route, record).await,
    }
}

/// CONNECT to a flow's plain-HTTP port (Node's undici sends `http://` URLs that way): the
/// tunnel is served as HTTP, each request inside decided, rewritten (`Host` from the target)
/// and audited as if it had been forwarded, with the CONNECT's target as its only target. An
/// opaque tunnel there would let another `Host` reach a CDN-hosted name (domain fronting).
fn http_inside(
    shared: &Arc<Shared>,
    conn: &Connection,
    mut req: Request<Incoming>,
    target: Target,
    record: &Recorder,
) -> Result<Response<Body>, GatewayError> {
    let on_upgrade = hyper::upgrade::on(&mut req);
    let limits = shared.runtime.load().config.limits.clone();
    let inner = Connection {
        within: Some(Target {
            kind: Kind::Forward,
            ..target
        }),
        ..conn.clone()
    };
    let (shared, record) = (shared.clone(), record.clone());
    let stop = shared.stop.clone();
    shared.clone().tracker.spawn(async move {
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

/// CONNECT: reach the target first, answer 200 only then, and relay in a tracked task that
/// keeps the client's connection slot until the tunnel closes.
#[allow(clippy::too_many_arguments)]
async fn tunnel(
    shared: &Shared,
    runtime: &Runtime,
    slot: Arc<Admitted>,
    mut req: Request<Incoming>,
    target: &Target,
    flow: &Arc<Flow>,
    route: Route,
    record: &Recorder,
) -> Result<Response<Body>, GatewayError> {
    let limits = &runtime.config.limits;
    let (upstream, route_taken) = match route {
        Route::Direct => {
            let stream = connect_direct(shared, runtime, target, flow).await?;
            (Side::Tcp(stream), "direct".to_string())
        }
        Route::Upstream => {
            let trying = |url: &str| record.route(url);
            let (io, parent) = runtime
                .parents
                .tunnel(target, flow, &runtime.timeouts(flow), trying)
                .await?;
            (Side::Io(io), parent)
        }
    };
    record.route(&route_taken);
    let plan = relay::Plan {
        idle: flow.idle_timeout.unwrap_or(limits.idle_timeout),
        sni: (flow.sni_check && flow.tls_ports.contains(&target.port)).then(|| relay::SniRule {
            target: target.host.clone(),
            flow: flow.clone(),
            timeout: limits.sni_timeout,
        }),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let (record, stop) = (record.clone(), shared.stop.clone());
    let audit = shared.audit.clone();
    let (flow, client) = (flow.clone(), slot.ip());
    shared.tracker.spawn(async move {
        audit.tunnel_opened(&flow, client);
        match on_upgrade.await {
            Ok(upgraded) => {
                let (client, early) = relay::client_side(upgraded);
                relay::tunnel(client, early, upstream, plan, record, stop).await
            }
            Err(_) => record.reason(Reason::ClientGone),
        }
        audit.tunnel_closed(&flow, client);
        drop(slot);
    });
    Ok(Response::new(empty()))
}

/// Absolute-form HTTP: rewrite the head for the next hop, stream the bodies both ways.
async fn forward(
    shared: &Shared,
    runtime: &Runtime,
    req: Request<Incoming>,
    target: &Target,
    flow: &Flow,
    route: Route,
    record: &Recorder,
) -> Result<Response<Body>, GatewayError> {
    let via = &runtime.config.listen.via;
    let (mut parts, body) = req.into_parts();
    reframe(&mut parts.headers)?;
    strip_hop_by_hop(&mut parts.headers);
    add_via(&mut parts.headers, parts.version, via);
    parts.headers.insert(HOST, host_header(target));
    parts.version = Version::HTTP_11;
    let body = Counted::boxed(body, record.clone(), Direction::Up);
    let response = match route {
        Route::Direct => {
            parts.uri = origin_form(&parts.uri);
            record.route("direct");
            send_direct(shared, runtime, parts, body, target, flow).await?
        }
        Route::Upstream => {
            parts.uri = absolute_form(&parts.uri, target);
            let trying = |url: &str| record.route(url);
            let (response, _parent) = runtime
                .parents
                .forward(
                    Request::from_parts(parts, body),
                    flow,
                    &runtime.timeouts(flow),
                    trying,
                )
                .await?;
            response
        }
    };
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    add_via(&mut parts.headers, parts.version, via);
    Ok(Response::from_parts(
        parts,
        Counted::boxed(body, record.clone(), Direction::Down),
    ))
}

/// Sends to the origin on a pooled connection when one is idle, else on a new one. A request
/// the pooled connection never wrote goes on a new one; one it may have delivered goes again
/// only when it is safe (RFC 9110 §9.2.1: GET, HEAD, OPTIONS, TRACE) and has no body.
async fn send_direct(
    shared: &Shared,
    runtime: &Runtime,
    parts: http::request::Parts,
    body: Body,
    target: &Target,
    flow: &Flow,
) -> Result<Response<Incoming>, GatewayError> {
    let key = (target.host.clone(), target.port);
    let origin = target.to_string();
    let http_error = |source| exchange_error(Hop::Origin, origin.clone(), source);
    let bound = runtime.timeouts(flow).response;
    let mut request = (parts, body);
    if let Some(mut sender) = shared.origins.checkout(&key).await {
        let (parts, body) = request;
        let resend = (is_safe(&parts.method) && body.is_end_stream()).then(|| parts.clone());
        let sent = sender.try_send_request(Request::from_parts(parts, body));
        match tokio::time::timeout(bound, sent).await {
            Err(_) => return Err(GatewayError::ResponseTimeout(bound)),
            Ok(Ok(response)) => {
                shared.origins.checkin_when_ready(key, sender);
                return Ok(response);
            }
            Ok(Err(mut e)) => match (e.take_message(), resend) {
                (Some(unsent), _) => request = unsent.into_parts(),
                (None, Some(parts)) => request = (parts, empty()),
                (None, None) => return Err(http_error(e.into_error())),
            },
        }
    }
    let (parts, body) = request;
    let stream = connect_direct(shared, runtime, target, flow).await?;
    let mut sender: SendRequest<Body> = {
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(http_error)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        sender
    };
    let sent = sender.send_request(Request::from_parts(parts, body));
    let response = tokio::time::timeout(bound, sent)
        .await
        .map_err(|_| GatewayError::ResponseTimeout(bound))?
        .map_err(http_error)?;
    shared.origins.checkin_when_ready(key, sender);
    Ok(response)
}

fn is_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Resolves (checked against the flow) and connects to the origin.
async fn connect_direct(
    shared: &Shared,
    runtime: &Runtime,
    target: &Target,
    flow: &Flow,
) -> Result<TcpStream, GatewayError> {
    let timeout = runtime.config.limits.connect_timeout;
    let addrs = resolve(
        &runtime.config.resolve,
        &shared.drift,
        target,
        flow,
        timeout,
    )
    .await?;
    let stream = connect_any(&addrs, timeout, Hop::Origin).await?;
    // A new socket is best effort already.
    if flow.dscp.is_some() {
        crate::connect::set_dscp(&stream, flow.dscp);
    }
    Ok(stream)
}

/// The target of a proxy request: CONNECT's authority, or an absolute `http://` URI; inside a
/// CONNECT to a plain-HTTP port, that CONNECT's target (origin-form requests, or absolute-form
/// ones naming that same target).
fn request_target<B>(
    req: &Request<B>,
    max_uri: u32,
    within: Option<&Target>,
) -> Result<Target, GatewayError> {
    let uri = req.uri();
    let length = uri.path_and_query().map_or(0, |pq| pq.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    if length > max_uri as usize {
        return Err(GatewayError::UriTooLong(max_uri));
    }
    if req.method() == Method::TRACE {
        return Err(GatewayError::MethodNotAllowed(Method::TRACE));
    }
    let kind = if req.method() == Method::CONNECT {
        if within.is_some() {
            return Err(GatewayError::BadRequest(
                "CONNECT inside a tunnel is refused".to_string(),
            ));
        }
        Kind::Connect
    } else {
        match (uri.scheme_str(), within) {
            (None, Some(within)) => return Ok(within.clone()),
            (None, None) => return Err(GatewayError::OriginForm),
            (Some("http"), _) => {}
            (Some("https"), None) => return Err(GatewayError::HttpsForward),
            (Some(other), _) => {
                return Err(GatewayError::BadRequest(format!(
                    "the {other}:// scheme is not proxied"
                )))
            }
        }
        Kind::Forward
    };
    let authority = uri
        .authority()
        .ok_or_else(|| GatewayError::BadRequest("the request has no host".to_string()))?;
    if authority.as_str().contains('@') {
        return Err(GatewayError::BadRequest(
            "URLs with user information are refused".to_string(),
        ));
    }
    let port = match (explicit_port(authority.as_str())?, kind) {
        (Some(port), _) => port,
        (None, Kind::Forward) => 80,
        (None, Kind::Connect) => {
            return Err(GatewayError::BadRequest(
                "CONNECT needs host:port".to_string(),
            ))
        }
    };
    let host =
        Host::parse(authority.host()).map_err(|e| GatewayError::BadRequest(e.to_string()))?;
    let target = Target { host, port, kind };
    match within {
        Some(within) if (&within.host, within.port) != (&target.host, target.port) => {
            Err(GatewayError::BadRequest(format!(
                "inside a CONNECT to {within}, requests go to {within} only, not {target}"
            )))
        }
        _ => Ok(target),
    }
}

/// The port written in an authority: `None` when there is none (or it is empty, RFC 3986
/// §3.2.3), an error when it is not a port (`:8o`, `:65536`, `:0`): never the default.
fn explicit_port(authority: &str) -> Result<Option<u16>, GatewayError> {
    let after_host = match authority.rfind(']') {
        Some(end) => &authority[end + 1..],
        None => authority,
    };
    match after_host.rsplit_once(':') {
        None | Some((_, "")) => Ok(None),
        Some((_, written)) => match written.parse::<u16>() {
            Ok(port) if port != 0 && written.bytes().all(|b| b.is_ascii_digit()) => Ok(Some(port)),
            _ => Err(GatewayError::BadRequest(format!(
                "{:.64} is not a port (in {:.256})",
                format!("{written:?}"),
                authority
            ))),
        },
    }
}

fn scheme(target: &Target) -> &'static str {
    match target.kind {
        Kind::Connect => "connect",
        Kind::Forward => "http",
    }
}

/// The path for the audit: forward requests only, without the query string.
fn path<B>(req: &Request<B>) -> Option<&str> {
    (req.method() != Method::CONNECT).then(|| req.uri().path())
}

fn describe<B>(req: &Request<B>, target: &Target) -> String {
    match target.kind {
        Kind::Connect => format!("CONNECT {target}"),
        Kind::Forward => format!(
            "{} http://{}{}",
            req.method(),
            authority(target),
            req.uri().path()
        ),
    }
}

/// The next hop's framing is derived from the body hyper parsed, never copied from the
/// client's headers (no smuggling through odd `Content-Length`/`Transfer-Encoding`
/// combinations: with both, hyper reads the body by `Transfer-Encoding`, RFC 9112 §6.3,
/// and the origin sees only the framing we derive). Codings other than `chunked` are
/// refused rather than silently dropped.
fn reframe(headers: &mut http::HeaderMap) -> Result<(), GatewayError> {
    for value in headers.get_all(TRANSFER_ENCODING) {
        let codings = value.to_str().unwrap_or("?");
        if !codings.trim().eq_ignore_ascii_case("chunked") {
            return Err(GatewayError::TransferCoding(
                codings.chars().take(64).collect(),
            ));
        }
    }
    headers.remove(TRANSFER_ENCODING);
    headers.remove(CONTENT_LENGTH);
    Ok(())
}

/// `host`, or `host:port` when the port is not 80.
fn authority(target: &Target) -> String {
    if target.port == 80 {
        target.host.to_string()
    } else {
        target.to_string()
    }
}

fn host_header(target: &Target) -> HeaderValue {
    HeaderValue::from_str(&authority(target))
        .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

fn origin_form(uri: &Uri) -> Uri {
    let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
    pq.parse().unwrap_or_else(|_| Uri::from_static("/"))
}

fn absolute_form(uri: &Uri, target: &Target) -> Uri {
    let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let port = if target.port == 80 {
        String::new()
    } else {
        format!(":{}", target.port)
    };
    format!("http://{}{}{}", target.host, port, pq)
        .parse()
        .unwrap_or_else(|_| uri.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(method: &str, uri: &str) -> Result<Target, GatewayError> {
        let req = Request::builder().method(method).uri(uri).body(()).unwrap();
        request_target(&req, 8192, None)
    }

    #[test]
    fn absolute_form_and_connect_give_the_target() {
        let t = target("GET", "http://Covotem.Esante-Centre.FR./a?b").unwrap();
        assert_eq!(t.to_string(), "covotem.esante-centre.fr:80");
        assert_eq!(t.kind, Kind::Forward);
        let t = target("CONNECT", "covotem.esante-centre.fr:443").unwrap();
        assert_eq!((t.port, t.kind), (443, Kind::Connect));
        let t = target("GET", "http://[2001:db8::1]:8080/").unwrap();
        assert_eq!(t.to_string(), "[2001:db8::1]:8080");
        assert_eq!(
            target("GET", "http://h.example:/").unwrap().port,
            80,
            "an empty port is the default (RFC 3986 §3.2.3)"
        );
    }

    #[test]
    fn what_is_not_a_proxy_request_is_refused_with_its_reason() {
        assert!(matches!(
            target("GET", "/index.html"),
            Err(GatewayError::OriginForm)
        ));
        assert!(matches!(
            target("GET", "https://h.example/"),
            Err(GatewayError::HttpsForward)
        ));
        assert!(matches!(
            target("TRACE", "http://h.example/"),
            Err(GatewayError::MethodNotAllowed(_))
        ));
        for (method, uri, words) in [
            ("GET", "ftp://h.example/", "ftp:// scheme"),
            ("GET", "http://user:pw@h.example/", "user information"),
            ("CONNECT", "h.example", "host:port"),
            ("CONNECT", "h.example:0", "not a port"),
            ("CONNECT", "h.example:65536", "not a port"),
            ("GET", "http://h.example:8o/", "not a port"),
            ("GET", "http://h.example:+80/", "not a port"),
        ] {
            match target(method, uri) {
                Err(GatewayError::BadRequest(why)) => assert!(why.contains(words), "{uri}: {why}"),
                other => panic!("{uri}: {other:?}"),
            }
        }
        let long = format!("http://h.example/{}", "a".repeat(9000));
        assert!(matches!(
            target("GET", &long),
            Err(GatewayError::UriTooLong(8192))
        ));
    }

    #[test]
    fn inside_a_tunnel_requests_go_to_its_target_only() {
        let within = target("CONNECT", "h.example:8080").unwrap();
        let inside = |uri: &str, method: &str| {
            let req = Request::builder().method(method).uri(uri).body(()).unwrap();
            request_target(&req, 8192, Some(&within))
        };
        assert_eq!(inside("/a", "GET").unwrap(), within);
        assert_eq!(
            inside("http://h.example:8080/a", "GET")
                .unwrap()
                .to_string(),
            "h.example:8080"
        );
        assert!(matches!(
            inside("http://other.example:8080/", "GET"),
            Err(GatewayError::BadRequest(_))
        ));
        assert!(matches!(
            inside("h.example:8080", "CONNECT"),
            Err(GatewayError::BadRequest(_))
        ));
    }

    #[test]
    fn the_next_hop_gets_the_form_it_expects() {
        let t = target("GET", "http://h.example:8080/p?q=1").unwrap();
        let uri: Uri = "http://h.example:8080/p?q=1".parse().unwrap();
        assert_eq!(origin_form(&uri), "/p?q=1");
        assert_eq!(absolute_form(&uri, &t), "http://h.example:8080/p?q=1");
        let t80 = target("GET", "http://h.example/").unwrap();
        assert_eq!(authority(&t80), "h.example");
        assert_eq!(
            absolute_form(&"http://h.example/".parse().unwrap(), &t80),
            "http://h.example/"
        );
    }

    #[test]
    fn framing_is_derived_and_unknown_codings_refused() {
        let mut h = http::HeaderMap::new();
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("5"));
        h.append(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        reframe(&mut h).unwrap();
        assert!(h.is_empty());
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("gzip, chunked"));
        assert!(matches!(
            reframe(&mut h),
            Err(GatewayError::TransferCoding(_))
        ));
    }
}
