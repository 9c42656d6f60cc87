//! The admin listener: `/metrics` (Prometheus), `/healthz`, `/readyz`, `/proxy.pac`,
//! `/flows` (the effective policy as JSON) and `POST /reload`. Never on a proxy port; only
//! `admin.allow` may use it, within connection caps; refusals and reloads are audited.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{CONTENT_TYPE, HOST};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use passerelle_config::Route;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::body::{full, Body};
use crate::limits::Connections;
use crate::metrics::Gauges;
use crate::record::{AuditEvent, Decision, EventKind, Reason};
use crate::service::Shared;

/// Open admin connections at most, in all and per client: the admin port must not be a way
/// to exhaust the process's descriptors.
const MAX_CONNECTIONS: usize = 64;
const MAX_PER_CLIENT: u32 = 16;

/// Serves the admin listener: clients outside `admin.allow` are refused at accept (closed,
/// audited), the rest within the connection caps.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, closing: CancellationToken) {
    let connections = Arc::new(Connections::default());
    loop {
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin.accept.failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = closing.cancelled() => return,
        };
        if !shared.runtime.load().config.admin.allows(client.ip()) {
            refused(
                &shared,
                client,
                None,
                Reason::ClientNotAllowed,
                "not in admin.allow",
            );
            continue;
        }
        let Ok(admitted) =
            connections.admit_within(client.ip().to_canonical(), MAX_CONNECTIONS, MAX_PER_CLIENT)
        else {
            refused(
                &shared,
                client,
                None,
                Reason::TooManyConnections,
                "too many admin connections",
            );
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(shared.clone(), client, req));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(admitted);
        });
    }
}

/// An admin refusal's record: who, what, why.
fn refused(
    shared: &Shared,
    client: SocketAddr,
    req: Option<&Request<Incoming>>,
    reason: Reason,
    detail: &str,
) {
    shared.audit.refusal(AuditEvent {
        event: EventKind::Admin,
        client: Some(client.to_string()),
        method: req.map(|r| r.method().to_string()),
        path: req.map(|r| r.uri().path().chars().take(256).collect()),
        decision: Some(Decision::Deny),
        reason: Some(reason),
        detail: Some(detail.to_string()),
        status: req.map(|_| 403),
        ..AuditEvent::default()
    });
}

/// The header `POST /reload` needs: a browser cannot send it cross-site without a CORS
/// preflight, which this endpoint never grants, so a page open on an allowed host cannot
/// make the gateway reload.
pub const RELOAD_HEADER: &str = "x-passerelle-reload";

async fn answer(
    shared: Arc<Shared>,
    client: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let runtime = shared.runtime.load_full();
    if !runtime.config.admin.allows(client.ip()) {
        refused(
            &shared,
            client,
            Some(&req),
            Reason::ClientNotAllowed,
            "not in admin.allow",
        );
        return Ok(text(
            StatusCode::FORBIDDEN,
            "text/plain",
            "client not in admin.allow\n".into(),
        ));
    }
    // A workstation pointed at the admin port by mistake: say where the proxy is.
    if req.method() == Method::CONNECT || req.uri().authority().is_some() {
        let proxies: Vec<String> = shared.proxy_addrs.iter().map(ToString::to_string).collect();
        return Ok(text(
            StatusCode::BAD_REQUEST,
            "text/plain; charset=utf-8",
            format!(
                "this is Passerelle's admin listener (status page, metrics, reload), not the proxy: set the proxy to {}\n",
                proxies.join(" or ")
            ),
        ));
    }
    let response = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => text(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            shared.audit.metrics().render(gauges(&shared)),
        ),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, "/readyz") => match readiness(&shared) {
            Ok(()) => text(StatusCode::OK, "text/plain", "ready\n".into()),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {why}\n"),
            ),
        },
        (&Method::GET, "/proxy.pac") => {
            let proxy = announced_proxy(&shared, &req);
            let pac = crate::pac::render(&proxy, &runtime.config.pac.direct);
            text(StatusCode::OK, "application/x-ns-proxy-autoconfig", pac)
        }
        (&Method::GET, "/flows") => text(StatusCode::OK, "application/json", flows_json(&shared)),
        (&Method::GET, "/") => {
            let lang = match crate::pages::negotiate(req.headers(), &runtime.config.pages).0 {
                crate::record::Lang::Fr => "fr",
                crate::record::Lang::En => "en",
            };
            page(
                STATUS_HTML.replace("{lang}", lang),
                "text/html; charset=utf-8",
            )
        }
        (&Method::GET, "/status.js") => {
            page(STATUS_JS.to_string(), "text/javascript; charset=utf-8")
        }
        (&Method::GET, "/status.css") => page(STATUS_CSS.to_string(), "text/css; charset=utf-8"),
        (&Method::GET, "/status.json") => {
            text(StatusCode::OK, "application/json", status_json(&shared))
        }
        (&Method::POST, "/reload") if !req.headers().contains_key(RELOAD_HEADER) => {
            refused(
                &shared,
                client,
                Some(&req),
                Reason::ReloadUnconfirmed,
                "POST /reload without the X-Passerelle-Reload header",
            );
            text(
                StatusCode::FORBIDDEN,
                "text/plain",
                "a reload needs the header X-Passerelle-Reload (curl -X POST -H 'X-Passerelle-Reload: 1' .../reload)\n".into(),
            )
        }
        (&Method::POST, "/reload") => {
            let (answer, outcome) = tokio::sync::oneshot::channel();
            let asked = shared
                .reload
                .send(crate::runtime::ReloadRequest { by: client, answer });
            let outcome = match asked {
                Ok(()) => tokio::time::timeout(RELOAD_WAIT, outcome)
                    .await
                    .ok()
                    .and_then(Result::ok),
                Err(_) => None,
            };
            match outcome {
                Some(Ok(digest)) => text(
                    StatusCode::OK,
                    "text/plain",
                    format!("reloaded: the configuration's digest is now {digest}\n"),
                ),
                Some(Err(problems)) => text(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "text/plain",
                    format!("reload refused, the running configuration stays:\n{problems}\n"),
                ),
                None => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "the reload was not decided (the gateway is stopping, or runs in a process that does not reload): see the log\n".into(),
                ),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "GET / /status.json /metrics /healthz /readyz /proxy.pac /flows; POST /reload\n".into(),
        ),
    };
    Ok(response)
}

/// How long `POST /reload` waits for the reload to be decided (loading and checking the
/// configuration, its parents' names).
const RELOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

const STATUS_HTML: &str = include_str!("../assets/status.html");
const STATUS_JS: &str = include_str!("../assets/status.js");
const STATUS_CSS: &str = include_str!("../assets/status.css");

/// The status page's pieces: same origin only, nothing inline, nothing else allowed.
fn page(body: String, content_type: &'static str) -> Response<Body> {
    let mut response = text(StatusCode::OK, content_type, body);
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_SECURITY_POLICY,
        http::HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    response
}

/// The status page's data.
fn status_json(shared: &Shared) -> String {
    let runtime = shared.runtime.load();
    let config = &runtime.config;
    let flows: Vec<String> = config
        .policy
        .enabled_flows()
        .map(|f| f.id.clone())
        .collect();
    let snapshot = shared.audit.status().snapshot(&flows);
    let parents: Vec<serde_json::Value> = runtime
        .parents
        .list()
        .iter()
        .map(|p| {
            serde_json::json!({
                "url": p.url,
                "state": p.status().as_str(),
                "state_words": p.status_words(),
                "scheme": p.scheme(),
                "last_handshake": p.last_handshake().map(|t| humantime::format_rfc3339_seconds(t).to_string()),
                "backoff_seconds": p.state.health.backoff_left().map(|d| d.as_secs()),
                // Its recent failures (of the last 100 the page keeps), the latest first.
                "failures": snapshot.failures.iter().filter(|f| f.route == p.url).count(),
                "last_failure": snapshot.failures.iter().find(|f| f.route == p.url),
            })
        })
        .collect();
    let tunnels: i64 = snapshot.flows.iter().map(|f| f.tunnels).sum();
    let uptime = std::time::Duration::from_secs(shared.started.elapsed().as_secs());
    let value = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "commit": crate::COMMIT,
        "uptime": humantime::format_duration(uptime).to_string(),
        "connections": shared.connections.open(),
        "tunnels": tunnels,
        "digest": config.digest,
        "capacity": crate::capacity::view(shared.audit.capacity().visios(), &config.site),
        "parents": parents,
        "flows": snapshot.flows,
        "per_minute": snapshot.per_minute,
        "refusals": snapshot.refusals,
        "failures": snapshot.failures,
        "reloads": snapshot.reloads,
        "forwarders": shared.audit.forwarders(),
    });
    serde_json::to_string(&value).unwrap_or_default()
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    response
}

fn gauges(shared: &Shared) -> Gauges {
    let runtime = shared.runtime.load();
    let o = std::sync::atomic::Ordering::Relaxed;
    Gauges {
        connections_open: shared.connections.open(),
        audit_queued: shared.audit.queued(),
        audit_dropped: shared.audit.dropped_count(),
        parents: runtime
            .parents
            .list()
            .iter()
            .map(|p| {
                (
                    p.url.clone(),
                    p.status().as_str(),
                    [
                        p.state.handshakes[0].load(o),
                        p.state.handshakes[1].load(o),
                        p.state.handshakes[2].load(o),
                    ],
                    p.state.auth_failures.load(o),
                )
            })
            .collect(),
        visios: shared.audit.capacity().visios(),
        throughput: shared.audit.capacity().throughput(),
        forwarders: shared.audit.forwarders(),
        kerberos_caches: passerelle_kerberos::live_caches(),
    }
}

/// Ready when the listeners are up (they are, if this answers) and, when some route needs a
/// parent, at least one parent is up and not in an authentication back-off.
fn readiness(shared: &Shared) -> Result<(), String> {
    let runtime = shared.runtime.load();
    let policy = &runtime.config.policy;
    let needs_parent = policy.routing().default == Route::Upstream;
    let parents = runtime.parents.list();
    if !needs_parent
        || parents
            .iter()
            .any(|p| p.status() == crate::upstream::ParentHealth::Up)
    {
        return Ok(());
    }
    let states: Vec<String> = parents
        .iter()
        .map(|p| format!("{}: {}", p.url, p.status_words()))
        .collect();
    Err(format!("no usable parent ({})", states.join(", ")))
}

/// `pac.proxy`, else the listener's address, else (listening on every address) the name
/// the workstation used to reach the admin endpoint, with the proxy port.
fn announced_proxy(shared: &Shared, req: &Request<Incoming>) -> String {
    let runtime = shared.runtime.load();
    let config = &runtime.config;
    if !config.pac.proxy.is_empty() {
        return config.pac.proxy.clone();
    }
    let listener = config
        .listen
        .proxy
        .first()
        .copied()
        .unwrap_or_else(|| ([127, 0, 0, 1], 3128).into());
    if !listener.ip().is_unspecified() {
        return listener.to_string();
    }
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| {
            passerelle_config::Host::parse(h.rsplit_once(':').map_or(h, |(name, _)| name)).ok()
        });
    match host {
        Some(host) => format!("{host}:{}", listener.port()),
        None => format!("127.0.0.1:{}", listener.port()),
    }
}

fn flows_json(shared: &Shared) -> String {
    let runtime = shared.runtime.load();
    let config = &runtime.config;
    let policy = &config.policy;
    let routing = policy.routing();
    let value = serde_json::json!({
        "digest": config.digest,
        "clients": policy.clients().iter().map(|c| c.to_string()).collect::<Vec<_>>(),
        "routing": {
            "default": routing.default.to_string(),
            "direct": routing.direct.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
            "bypass_covotem_server": routing.bypass_covotem_server,
        },
        "upstream": config.upstreams.iter().map(|u| serde_json::json!({"url": u.url, "auth": u.auth.to_string()})).collect::<Vec<_>>(),
        "flows": policy.flows().iter().map(|f| serde_json::to_value(&**f).unwrap_or_default()).collect::<Vec<_>>(),
    });
    serde_json::to_string_pretty(&value).unwrap_or_default()
}
