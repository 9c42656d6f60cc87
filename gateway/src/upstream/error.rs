//! Failures through a parent proxy. Whether the next parent may be tried follows from what
//! failed and whether the request may have gone past the parent: a parent that cannot be
//! reached (DNS, TCP, TLS) or that broke before our request could be forwarded → the next
//! parent; an authentication failure → never (the same account would be refused again).

use std::time::Duration;

use http::StatusCode;
use passerelle_auth::AuthError;

use crate::connect::ConnectError;
use crate::record::Reason;

/// Could the request have reached the origin through the parent?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// No: it was never written, or it was an authentication leg the parent does not forward.
    No,
    /// Perhaps: it was written to a parent that could have forwarded it.
    Maybe,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("parent {parent}: {source}")]
    Unreachable {
        parent: String,
        #[source]
        source: ConnectError,
    },
    #[error("parent {parent} broke the exchange: {source}")]
    Broken {
        parent: String,
        sent: Sent,
        #[source]
        source: hyper::Error,
    },
    #[error("parent {parent} did not answer {what} within {}", humantime::format_duration(*.after))]
    Silent {
        parent: String,
        what: &'static str,
        after: Duration,
    },
    #[error("no answer through parent {parent} within {} (the flow's idle timeout)", humantime::format_duration(*.after))]
    ResponseTimeout { parent: String, after: Duration },
    #[error("parent {parent}: {source}")]
    Auth {
        parent: String,
        #[source]
        source: AuthError,
    },
    #[error(
        "parent refused the gateway's credentials: {parent} is in back-off for {seconds}s more"
    )]
    BackOff { parent: String, seconds: u64 },
    #[error("parent {parent} answered {status} to CONNECT {target}")]
    Refused {
        parent: String,
        status: StatusCode,
        target: String,
    },
    #[error("parent {parent} {what}")]
    Protocol { parent: String, what: String },
    #[error("no parent proxy is reachable (tried {tried}); last: {last}")]
    AllDown {
        tried: usize,
        last: Box<UpstreamError>,
    },
    #[error("the request body is malformed: {0}")]
    ClientBody(String),
}

impl UpstreamError {
    /// The audit's reason.
    pub fn reason(&self) -> Reason {
        match self {
            UpstreamError::Unreachable { .. }
            | UpstreamError::Silent { .. }
            | UpstreamError::AllDown { .. } => Reason::ParentUnreachable,
            UpstreamError::Broken { .. } => Reason::UpstreamProtocol,
            UpstreamError::ResponseTimeout { .. } => Reason::ResponseTimeout,
            UpstreamError::Auth { source, .. } => source.into(),
            UpstreamError::BackOff { .. } => Reason::ParentAuthFailed,
            UpstreamError::Refused { .. } => Reason::ParentRefused,
            UpstreamError::Protocol { .. } => Reason::ParentProtocol,
            UpstreamError::ClientBody(_) => Reason::ClientBodyError,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            UpstreamError::ResponseTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            UpstreamError::ClientBody(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    /// The parent this failure happened at (the last one tried, when none was reachable).
    pub fn parent(&self) -> Option<&str> {
        match self {
            UpstreamError::Unreachable { parent, .. }
            | UpstreamError::Broken { parent, .. }
            | UpstreamError::Silent { parent, .. }
            | UpstreamError::ResponseTimeout { parent, .. }
            | UpstreamError::Auth { parent, .. }
            | UpstreamError::BackOff { parent, .. }
            | UpstreamError::Refused { parent, .. }
            | UpstreamError::Protocol { parent, .. } => Some(parent),
            UpstreamError::AllDown { last, .. } => last.parent(),
            UpstreamError::ClientBody(_) => None,
        }
    }

    /// The parent's own transport failed: it is marked down, and the next one may be tried
    /// when nothing went past it.
    pub fn is_transport(&self) -> bool {
        matches!(
            self,
            UpstreamError::Unreachable { .. }
                | UpstreamError::Broken { .. }
                | UpstreamError::Silent { .. }
        )
    }

    /// Whether the request may have gone past the parent toward the origin.
    pub fn sent(&self) -> Sent {
        match self {
            UpstreamError::Broken { sent, .. } => *sent,
            UpstreamError::ResponseTimeout { .. } => Sent::Maybe,
            _ => Sent::No,
        }
    }
}
