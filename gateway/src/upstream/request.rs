//! A request on its way through a parent: one copy per authentication leg, and its body only
//! on the leg that can succeed. Negotiation legs carry `Content-Length: 0` (as curl does); a
//! first contact with a parent whose scheme is unknown sends the head with
//! `Expect: 100-continue` and holds the body until the parent asks for it, so that a 407
//! costs nothing (Squid stops reading a connection after a 407 to a body over 64 KiB).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, EXPECT, HOST, PROXY_AUTHORIZATION};
use http::{Method, Request, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use passerelle_config::Target;

use super::error::UpstreamError;
use crate::body::{empty, full, Body, BoxError};

/// Request bodies up to this size are kept so that they can be sent again (another leg after
/// a pooled connection lost its authentication, another parent). An OCSP POST is a few
/// hundred bytes; larger bodies stream, once.
const REPLAY_LIMIT: u64 = 1024 * 1024;

/// How long a held body waits for `100 Continue` before going anyway (RFC 9110 §10.1.1
/// leaves it to the client; curl waits one second too).
const EXPECT_WAIT: Duration = Duration::from_secs(1);

/// What a leg carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leg {
    /// An authentication leg the parent answers with a 407: the head only.
    Negotiation,
    /// The parent's scheme is unknown: the head announces the body and holds it.
    FirstContact,
    /// The leg that can succeed: everything.
    Final,
}

pub struct Outgoing {
    parts: http::request::Parts,
    body: OutBody,
}

enum OutBody {
    None,
    Buffered(Bytes),
    /// Read from the client as it goes out: sent once. `None` once it went.
    Stream(Option<Body>),
}

/// A body handed to a first-contact leg, which may be taken back untouched after a 407.
pub struct Held {
    slot: Arc<Mutex<Option<Body>>>,
    touched: Arc<AtomicBool>,
}

impl Outgoing {
    /// A forwarded request. Small bodies of known size are read now, so they can be replayed.
    pub async fn new(req: Request<Body>) -> Result<Outgoing, UpstreamError> {
        let (parts, body) = req.into_parts();
        let body = if http_body::Body::is_end_stream(&body) {
            OutBody::None
        } else if http_body::Body::size_hint(&body)
            .upper()
            .is_some_and(|n| n <= REPLAY_LIMIT)
        {
            let bytes = body
                .collect()
                .await
                .map_err(|e| UpstreamError::ClientBody(e.to_string()))?
                .to_bytes();
            if bytes.is_empty() {
                OutBody::None
            } else {
                OutBody::Buffered(bytes)
            }
        } else {
            OutBody::Stream(Some(body))
        };
        Ok(Outgoing { parts, body })
    }

    /// `CONNECT host:port`, with our `Via` so that a parent that is ourselves is caught.
    pub fn connect(target: &Target, via: &str) -> Outgoing {
        let authority = target.to_string();
        let mut req = Request::new(());
        *req.method_mut() = Method::CONNECT;
        *req.uri_mut() = authority.parse().unwrap_or_default();
        if let Ok(value) = HeaderValue::from_str(&authority) {
            req.headers_mut().insert(HOST, value);
        }
        crate::headers::add_via(req.headers_mut(), http::Version::HTTP_11, via);
        Outgoing {
            parts: req.into_parts().0,
            body: OutBody::None,
        }
    }

    /// `host:port` the request is for, as the parent sees it: what a parent's refusal of one
    /// destination is kept by.
    pub fn destination(&self) -> String {
        let uri = &self.parts.uri;
        match uri.authority() {
            Some(authority) if uri.port_u16().is_some() || self.is_connect() => {
                authority.as_str().to_ascii_lowercase()
            }
            Some(authority) => format!("{}:80", authority.as_str().to_ascii_lowercase()),
            None => uri.to_string(),
        }
    }

    pub fn is_connect(&self) -> bool {
        self.parts.method == Method::CONNECT
    }

    pub fn has_body(&self) -> bool {
        !matches!(self.body, OutBody::None)
    }

    /// Safe methods (RFC 9110 §9.2.1): the only ones resent once they may have reached the
    /// origin. Idempotent PUT and DELETE are not: the client saw one request, the origin would
    /// see two.
    pub fn safe(&self) -> bool {
        matches!(
            self.parts.method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
        )
    }

    /// Can it be sent again whole, as many times as needed?
    pub fn replayable(&self) -> bool {
        !matches!(self.body, OutBody::Stream(_))
    }

    /// Is the body still all here (buffered, or a stream nothing was read from)?
    pub fn whole(&self) -> bool {
        !matches!(self.body, OutBody::Stream(None))
    }

    /// May it go again after a failure where it may have reached the origin? Only a safe
    /// request whose body we still have, and only when nothing came back.
    pub fn resendable(&self) -> bool {
        self.safe() && self.replayable()
    }

    /// This leg's request. `Expect` from the client is ours to decide toward the next hop.
    pub fn build(
        &mut self,
        authorization: Option<&str>,
        leg: Leg,
    ) -> (Request<Body>, Option<Held>) {
        let mut parts = self.parts.clone();
        parts.headers.remove(PROXY_AUTHORIZATION);
        parts.headers.remove(EXPECT);
        if let Some(mut value) = authorization.and_then(|v| HeaderValue::from_str(v).ok()) {
            value.set_sensitive(true);
            parts.headers.insert(PROXY_AUTHORIZATION, value);
        }
        let has_body = self.has_body();
        let (body, held) = match (leg, &mut self.body) {
            (_, OutBody::None) => (empty(), None),
            (Leg::Negotiation, _) => {
                parts
                    .headers
                    .insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
                (empty(), None)
            }
            (Leg::Final, OutBody::Buffered(bytes)) => (full(bytes.clone()), None),
            (Leg::Final, OutBody::Stream(body)) => (body.take().unwrap_or_else(empty), None),
            (Leg::FirstContact, body) => {
                let inner = match body {
                    OutBody::Buffered(bytes) => full(bytes.clone()),
                    OutBody::Stream(body) => body.take().unwrap_or_else(empty),
                    OutBody::None => empty(),
                };
                parts
                    .headers
                    .insert(EXPECT, HeaderValue::from_static("100-continue"));
                let held = Held {
                    slot: Arc::new(Mutex::new(Some(inner))),
                    touched: Arc::new(AtomicBool::new(false)),
                };
                let released = Arc::new(tokio::sync::Notify::new());
                let body = HeldBody {
                    slot: held.slot.clone(),
                    touched: held.touched.clone(),
                    release: Some(Box::pin({
                        let released = released.clone();
                        async move {
                            tokio::select! {
                                _ = released.notified() => {}
                                _ = tokio::time::sleep(EXPECT_WAIT) => {}
                            }
                        }
                    })),
                };
                let mut req = Request::from_parts(parts, body.boxed_unsync());
                hyper::ext::on_informational(&mut req, move |res| {
                    if res.status() == StatusCode::CONTINUE {
                        released.notify_one();
                    }
                });
                return (req, Some(held));
            }
        };
        debug_assert!(has_body || held.is_none());
        (Request::from_parts(parts, body), held)
    }

    /// A request hyper handed back unsent (`try_send_request`): its body is still whole.
    pub fn recover(&mut self, req: Request<Body>) {
        if let OutBody::Stream(slot @ None) = &mut self.body {
            *slot = Some(req.into_body());
        }
    }

    /// After a first-contact leg was answered without the body being asked for: takes the
    /// body back. False when some of it went out and it cannot be sent again.
    pub fn take_back(&mut self, held: Held) -> bool {
        let untouched = !held.touched.load(Ordering::Acquire);
        let body = held.slot.lock().ok().and_then(|mut b| b.take());
        match &mut self.body {
            OutBody::Stream(slot @ None) if untouched => {
                *slot = body;
                slot.is_some()
            }
            OutBody::Stream(_) => false,
            _ => true,
        }
    }
}

/// A first contact's body: nothing until the parent says `100 Continue` (or a second of
/// silence); it shares its slot with [`Held`] so that an answer without the body lets the
/// gateway take it back.
struct HeldBody {
    slot: Arc<Mutex<Option<Body>>>,
    touched: Arc<AtomicBool>,
    release: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl http_body::Body for HeldBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(release) = self.release.as_mut() {
            ready!(release.as_mut().poll(cx));
            self.release = None;
        }
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        let Some(body) = slot.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = Pin::new(body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &frame {
            self.touched.store(true, Ordering::Release);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        self.slot
            .lock()
            .ok()
            .and_then(|b| b.as_ref().map(http_body::Body::size_hint))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn outgoing(method: Method, body: Option<&'static [u8]>, size_known: bool) -> Outgoing {
        let body: Body = match (body, size_known) {
            (None, _) => empty(),
            (Some(bytes), true) => full(Bytes::from_static(bytes)),
            // A body of unknown size: a stream, sent once.
            (Some(bytes), false) => Streamed(Some(Bytes::from_static(bytes))).boxed_unsync(),
        };
        let req = Request::builder()
            .method(method)
            .uri("http://h.example/p")
            .body(body)
            .unwrap();
        Outgoing::new(req).await.unwrap()
    }

    /// A body whose size is not known beforehand (chunked, from the client).
    struct Streamed(Option<Bytes>);

    impl http_body::Body for Streamed {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
        }
    }

    #[tokio::test]
    async fn what_may_go_again() {
        // (method, body, its size known) → safe, replayable, resendable
        let cases = [
            (Method::GET, None, true, true, true, true),
            (Method::HEAD, None, true, true, true, true),
            (Method::OPTIONS, None, true, true, true, true),
            (Method::GET, Some(&b"q"[..]), true, true, true, true),
            (Method::POST, Some(&b"ocsp"[..]), true, false, true, false),
            (Method::PUT, Some(&b"x"[..]), true, false, true, false),
            (Method::DELETE, None, true, false, true, false),
            (
                Method::POST,
                Some(&b"streamed"[..]),
                false,
                false,
                false,
                false,
            ),
            (
                Method::GET,
                Some(&b"streamed"[..]),
                false,
                true,
                false,
                false,
            ),
        ];
        for (method, body, known, safe, replayable, resendable) in cases {
            let out = outgoing(method.clone(), body, known).await;
            let what = format!("{method} {body:?} known {known}");
            assert_eq!(out.safe(), safe, "{what}");
            assert_eq!(out.replayable(), replayable, "{what}");
            assert_eq!(out.resendable(), resendable, "{what}");
            assert!(out.whole(), "{what}: nothing sent yet");
        }
    }

    #[tokio::test]
    async fn a_negotiation_leg_carries_no_body_and_a_streamed_body_goes_once() {
        let mut out = outgoing(Method::POST, Some(b"streamed"), false).await;
        let (leg, _) = out.build(Some("NTLM x"), Leg::Negotiation);
        assert_eq!(leg.headers()[CONTENT_LENGTH], "0");
        assert!(leg
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty());
        assert!(out.whole());
        let (last, _) = out.build(Some("NTLM y"), Leg::Final);
        assert_eq!(last.headers()[PROXY_AUTHORIZATION], "NTLM y");
        assert!(last.headers()[PROXY_AUTHORIZATION].is_sensitive());
        let sent = last.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&sent[..], b"streamed");
        assert!(!out.whole(), "a stream goes once");
    }

    #[test]
    fn a_destination_is_host_and_port() {
        let out = Outgoing::connect(
            &Target {
                host: passerelle_config::Host::parse("H.example").unwrap(),
                port: 443,
                kind: passerelle_config::Kind::Connect,
            },
            "passerelle",
        );
        assert_eq!(out.destination(), "h.example:443");
    }
}
