//! The request path's errors, typed per layer, and the one place that turns them into the
//! HTTP response a client sees and the `reason` the audit records.

use bytes::Bytes;
use http::{header, Response, StatusCode};
use passerelle_config::DenyReason;

use crate::audit::Recorder;
use crate::body::{full, Body};
use crate::connect::{ConnectError, Hop};
use crate::pages::{Page, Reader};
use crate::record::Reason;
use crate::upstream::UpstreamError;

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
    /// The audit's reason.
    pub fn reason(&self) -> Reason {
        match self {
            GatewayError::BadRequest(_) => Reason::BadRequest,
            GatewayError::OriginForm => Reason::OriginForm,
            GatewayError::HttpsForward => Reason::HttpsForward,
            GatewayError::MethodNotAllowed(_) => Reason::MethodNotAllowed,
            GatewayError::Loop(_) => Reason::Loop,
            GatewayError::RateLimited(_) => Reason::RateLimited,
            GatewayError::UriTooLong(_) => Reason::UriTooLong,
            GatewayError::TransferCoding(_) => Reason::TransferCoding,
            GatewayError::HeaderTooLarge(_) => Reason::HeaderTooLarge,
            GatewayError::ClientBody(_) => Reason::ClientBodyError,
            GatewayError::ResponseTimeout(_) => Reason::ResponseTimeout,
            GatewayError::Denied { reason, .. } => reason.into(),
            GatewayError::Connect(e) => e.reason(),
            GatewayError::Upstream(e) => e.reason(),
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

    /// Records the error in the request's audit record (a refusal when policy refused it, a
    /// failure otherwise) and makes the answer `reader` gets. With the request's body unread,
    /// the connection cannot carry another request: the answer closes it.
    pub fn answer(
        self,
        record: &Recorder,
        reader: Reader<'_>,
        body_unread: bool,
    ) -> Response<Body> {
        let reason = self.reason();
        let detail = self.to_string();
        let refused = self.status() == StatusCode::FORBIDDEN;
        match &self {
            GatewayError::Denied { reason: why, .. } => {
                record.deny(reason, detail.clone(), why.flow())
            }
            // Refused by policy after the decision (a name resolving inside): a refusal.
            _ if refused => record.deny(reason, detail.clone(), None),
            _ => record.fail(reason, detail.clone()),
        }
        let mut response = self.respond(&Page {
            reader,
            reason,
            detail: &detail,
            refused,
        });
        if body_unread {
            let close = header::HeaderValue::from_static("close");
            response.headers_mut().insert(header::CONNECTION, close);
        }
        response
    }

    /// The response: the status, and a page that says what failed, why, and how to find it
    /// again (see [`crate::pages`]).
    pub fn respond(self, page: &Page) -> Response<Body> {
        let status = self.status();
        let (body, content_type) = page.render(std::time::SystemTime::now());
        let mut response = Response::new(full(Bytes::from(body)));
        *response.status_mut() = status;
        // Clients that drop a CONNECT's page still print the status line: it says why.
        let phrase = if page.refused {
            format!(
                "Refused by Passerelle: {}, id {}",
                page.reason.as_str(),
                page.reader.id
            )
        } else {
            format!(
                "{} (Passerelle: {}, id {})",
                status.canonical_reason().unwrap_or("Error"),
                page.reason.as_str(),
                page.reader.id
            )
        };
        if let Ok(phrase) = hyper::ext::ReasonPhrase::try_from(phrase.into_bytes()) {
            response.extensions_mut().insert(phrase);
        }
        let headers = response.headers_mut();
        if page.reader.html {
            headers.insert(
                header::CONTENT_SECURITY_POLICY,
                header::HeaderValue::from_static(
                    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'",
                ),
            );
        }
        headers.insert(header::CONTENT_TYPE, content_type);
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
