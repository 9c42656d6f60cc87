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
    /// The account is held (refused by the domain, or its failure budget spent): nothing is
    /// presented, the request fails at once.
    #[error("parent {parent}: {detail}")]
    AccountHeld { parent: String, detail: String },
    /// The parent accepted the account and refuses this destination with a 407 (its policy).
    #[error("parent {parent} refused {destination} although it accepted the gateway's account (its policy answers 407); not asked again for {seconds}s")]
    DestinationRefused {
        parent: String,
        destination: String,
        seconds: u64,
    },
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
            UpstreamError::AccountHeld { .. } => Reason::AccountRefused,
            UpstreamError::DestinationRefused { .. } => Reason::ParentRefused,
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
            | UpstreamError::AccountHeld { parent, .. }
            | UpstreamError::DestinationRefused { parent, .. }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A real hyper error: a request on a connection whose other end went away.
    async fn broken() -> hyper::Error {
        let (client, server) = tokio::io::duplex(64);
        drop(server);
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(client))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = http::Request::new(http_body_util::Empty::<bytes::Bytes>::new());
        sender.send_request(req).await.unwrap_err()
    }

    #[tokio::test]
    async fn what_fails_over_and_what_may_have_reached_the_origin() {
        let p = || "http://p:8080".to_string();
        let unreachable = UpstreamError::Unreachable {
            parent: p(),
            source: ConnectError::NoAddress { host: "p".into() },
        };
        // (error, a transport failure of the parent, may have gone past it, status, reason)
        let cases: Vec<(UpstreamError, bool, Sent, u16, Reason)> = vec![
            (unreachable, true, Sent::No, 502, Reason::ParentUnreachable),
            (
                UpstreamError::Broken {
                    parent: p(),
                    sent: Sent::No,
                    source: broken().await,
                },
                true,
                Sent::No,
                502,
                Reason::UpstreamProtocol,
            ),
            (
                UpstreamError::Broken {
                    parent: p(),
                    sent: Sent::Maybe,
                    source: broken().await,
                },
                true,
                Sent::Maybe,
                502,
                Reason::UpstreamProtocol,
            ),
            (
                UpstreamError::Silent {
                    parent: p(),
                    what: "the CONNECT",
                    after: Duration::from_secs(1),
                },
                true,
                Sent::No,
                502,
                Reason::ParentUnreachable,
            ),
            (
                UpstreamError::ResponseTimeout {
                    parent: p(),
                    after: Duration::from_secs(1),
                },
                false,
                Sent::Maybe,
                504,
                Reason::ResponseTimeout,
            ),
            (
                UpstreamError::Auth {
                    parent: p(),
                    source: AuthError::Rejected {
                        offered: "NTLM".into(),
                    },
                },
                false,
                Sent::No,
                502,
                Reason::ParentAuthFailed,
            ),
            (
                UpstreamError::BackOff {
                    parent: p(),
                    seconds: 5,
                },
                false,
                Sent::No,
                502,
                Reason::ParentAuthFailed,
            ),
            (
                UpstreamError::AccountHeld {
                    parent: p(),
                    detail: "held".into(),
                },
                false,
                Sent::No,
                502,
                Reason::AccountRefused,
            ),
            (
                UpstreamError::DestinationRefused {
                    parent: p(),
                    destination: "h:443".into(),
                    seconds: 60,
                },
                false,
                Sent::No,
                502,
                Reason::ParentRefused,
            ),
            (
                UpstreamError::Refused {
                    parent: p(),
                    status: StatusCode::FORBIDDEN,
                    target: "h:443".into(),
                },
                false,
                Sent::No,
                502,
                Reason::ParentRefused,
            ),
            (
                UpstreamError::Protocol {
                    parent: p(),
                    what: "x".into(),
                },
                false,
                Sent::No,
                502,
                Reason::ParentProtocol,
            ),
            (
                UpstreamError::ClientBody("bad chunk".into()),
                false,
                Sent::No,
                400,
                Reason::ClientBodyError,
            ),
        ];
        for (error, transport, sent, status, reason) in cases {
            assert_eq!(error.is_transport(), transport, "{error}");
            assert_eq!(error.sent(), sent, "{error}");
            assert_eq!(error.status().as_u16(), status, "{error}");
            assert_eq!(error.reason(), reason, "{error}");
        }
        let all_down = UpstreamError::AllDown {
            tried: 2,
            last: Box::new(UpstreamError::BackOff {
                parent: p(),
                seconds: 1,
            }),
        };
        assert_eq!(all_down.parent(), Some("http://p:8080"));
        assert!(
            !all_down.is_transport(),
            "the failover loop made it: it is not retried"
        );
    }
}
