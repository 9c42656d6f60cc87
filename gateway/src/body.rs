//! Bodies on the request path: one boxed type for everything the gateway sends, and a
//! counting wrapper that feeds the audit's byte counts while streaming (never buffering).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};

use crate::audit::Recorder;
use crate::record::Reason;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Which way a counted body flows.
#[derive(Clone, Copy)]
pub enum Direction {
    Up,
    Down,
}

/// Streams `inner`, adding its data bytes to the record. A response body dropped before its
/// end marks the record `aborted` (the client went away, or the origin broke off).
pub struct Counted<B> {
    inner: B,
    record: Recorder,
    direction: Direction,
    done: bool,
}

impl<B> Counted<B>
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    pub fn boxed(inner: B, record: Recorder, direction: Direction) -> Body {
        let done = inner.is_end_stream();
        Counted {
            inner,
            record,
            direction,
            done,
        }
        .boxed_unsync()
    }
}

impl<B> HttpBody for Counted<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    match this.direction {
                        Direction::Up => this.record.add_up(n),
                        Direction::Down => this.record.add_down(n),
                    }
                }
                // hyper stops polling once the size hint says the end is reached.
                this.done = this.inner.is_end_stream();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                let e: BoxError = e.into();
                this.record.reason(match this.direction {
                    Direction::Up => Reason::ClientBodyError,
                    Direction::Down => Reason::OriginBodyError,
                });
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Counted<B> {
    fn drop(&mut self) {
        if !self.done && matches!(self.direction, Direction::Down) {
            self.record.cut();
        }
    }
}
