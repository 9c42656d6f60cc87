//! The request path's errors, typed per layer, and the one place that turns them into the
//! HTTP response a client sees and the `reason` the audit records.

use bytes::Bytes;
use http::{header, Response, StatusCode};
use passerelle_config::DenyReason;

use crate::body::{full, Body};
use crate::upstream::UpstreamError;

/// Failures reaching the next hop (the origin, or a parent proxy).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        host: String,
        source: std::io::Error,
    },
    #[error("{host} resolves to no address")]
    NoAddress { host: String },
    #[error(
        "{host} resolves to {addr}, an internal address, and flow {flow} does not allow_private"
    )]
    Internal {
        host: String,
        addr: std::net::IpAddr,
        flow: String,
    },
    #[error("connecting to {hop} {addr} timed out")]
    Timeout { hop: Hop, addr: String },
    #[error("cannot connect to {hop} {addr}: {source}")]
    Io {
        hop: Hop,
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS with {hop} {addr} failed: {source}")]
    Tls {
        hop: Hop,
        addr: String,
        source: std::io::Error,
    },
    #[error("{hop} {addr} broke the HTTP exchange: {source}")]
    Http {
        hop: Hop,
        addr: String,
        source: hyper::Error,
    },
}

/// Which side of the gateway failed, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    Origin,
    Parent,
}

impl std::fmt::Display for Hop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Hop::Origin => "origin",
            Hop::Parent => "parent proxy",
        })
    }
}

impl ConnectError {
    pub fn code(&self) -> &'static str {
        match self {
            ConnectError::Resolve { .. } | ConnectError::NoAddress { .. } => "dns_failed",
            ConnectError::Internal { .. } => "internal_address",
            ConnectError::Timeout { .. } => "connect_timeout",
            ConnectError::Io { .. } => "connect_failed",
            ConnectError::Tls { .. } => "tls_failed",
            ConnectError::Http { .. } => "upstream_protocol",
        }
    }
}

/// Everything that ends a request with an error response.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    BadRequest(String),
    #[error(
        "this is a proxy: send absolute-form requests (http://host/path) or CONNECT host:port"
    )]
    OriginForm,
    #[error("https:// URLs go through CONNECT; set this gateway as the HTTPS proxy too")]
    HttpsForward,
    #[error("method {0} is not forwarded")]
    MethodNotAllowed(http::Method),
    #[error("request loop: it already passed through {0}")]
    Loop(String),
    #[error("too many requests from {0}; slow down")]
    RateLimited(std::net::IpAddr),
    #[error("the request URI is longer than {0} bytes")]
    UriTooLong(u32),
    #[error("transfer coding {0:?} is not supported (only chunked)")]
    TransferCoding(String),
    #[error("the request head is larger than {0} bytes")]
    HeaderTooLarge(u32),
    #[error("the request body is malformed: {0}")]
    ClientBody(String),
    #[error("no answer from the origin within {} (the flow's idle timeout)", humantime::format_duration(*.0))]
    ResponseTimeout(std::time::Duration),
    #[error("{what} refused: {reason}")]
    Denied { what: String, reason: DenyReason },
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

impl GatewayError {
    /// The audit's stable `reason`.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::BadRequest(_) => "bad_request",
            GatewayError::OriginForm => "origin_form",
            GatewayError::HttpsForward => "https_forward",
            GatewayError::MethodNotAllowed(_) => "method_not_allowed",
            GatewayError::Loop(_) => "loop",
            GatewayError::RateLimited(_) => "rate_limited",
            GatewayError::UriTooLong(_) => "uri_too_long",
            GatewayError::TransferCoding(_) => "transfer_coding",
            GatewayError::HeaderTooLarge(_) => "header_too_large",
            GatewayError::ClientBody(_) => "client_body_error",
            GatewayError::ResponseTimeout(_) => "response_timeout",
            GatewayError::Denied { reason, .. } => reason.code(),
            GatewayError::Connect(e) => e.code(),
            GatewayError::Upstream(e) => e.code(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::BadRequest(_) | GatewayError::OriginForm | GatewayError::HttpsForward => {
                StatusCode::BAD_REQUEST
            }
            GatewayError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::Loop(_) => StatusCode::LOOP_DETECTED,
            GatewayError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            GatewayError::TransferCoding(_) => StatusCode::NOT_IMPLEMENTED,
            GatewayError::HeaderTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            GatewayError::ClientBody(_) => StatusCode::BAD_REQUEST,
            GatewayError::Denied { .. } | GatewayError::Connect(ConnectError::Internal { .. }) => {
                StatusCode::FORBIDDEN
            }
            GatewayError::Connect(ConnectError::Timeout { .. })
            | GatewayError::ResponseTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::Connect(_) => StatusCode::BAD_GATEWAY,
            GatewayError::Upstream(e) => e.status(),
        }
    }

    /// The response: status, and a one-line body that says what failed and where.
    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        let mut text = format!("passerelle: {self}\n");
        if let GatewayError::Denied { .. } = self {
            text.push_str("Ask your IT team to add a flow if this destination is needed; `passerelle check-config` lists the allowed ones.\n");
        }
        let mut response = Response::new(full(Bytes::from(text)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        );
        if status == StatusCode::TOO_MANY_REQUESTS {
            headers.insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        if status == StatusCode::BAD_REQUEST
            || status == StatusCode::LOOP_DETECTED
            || status == StatusCode::URI_TOO_LONG
            || status == StatusCode::NOT_IMPLEMENTED
        {
            headers.insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        response
    }
}

/// A failed exchange with the next hop: the client's own body when hyper says the body it
/// was given failed (a malformed chunk), the hop otherwise.
pub fn exchange_error(hop: Hop, addr: String, source: hyper::Error) -> GatewayError {
    if source.is_user() {
        GatewayError::ClientBody(source.to_string())
    } else {
        ConnectError::Http { hop, addr, source }.into()
    }
}
