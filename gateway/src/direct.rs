//! Direct egress: an allowed target reached without a parent. Resolved (static `connect_to`
//! first, then DNS, checked against the flow), connected, and for forwarded requests sent on a
//! pooled origin connection when one is idle.

use http::{Method, Request, Response};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use passerelle_config::{Flow, Target};
use tokio::net::TcpStream;

use crate::body::{empty, Body};
use crate::connect::{connect_any, resolve, Hop};
use crate::error::{exchange_error, GatewayError};
use crate::runtime::{Runtime, Shared};

/// Sends to the origin on a pooled connection when one is idle, else on a new one. A request
/// the pooled connection never wrote goes on a new one; one it may have delivered goes again
/// only when it is safe (RFC 9110 §9.2.1: GET, HEAD, OPTIONS, TRACE) and has no body.
pub async fn send(
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
    let stream = connect(shared, runtime, target, flow).await?;
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
pub async fn connect(
    shared: &Shared,
    runtime: &Runtime,
    target: &Target,
    flow: &Flow,
) -> Result<TcpStream, GatewayError> {
    let timeout = runtime.config.limits.connect_timeout;
    let addrs = resolve(
        &runtime.config.resolve,
        &shared.unlisted,
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
