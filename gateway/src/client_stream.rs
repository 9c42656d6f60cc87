//! A client's TCP connection as the gateway serves it: the bytes read past a PROXY protocol
//! header given back first, the DSCP of the answers applied as the request path sets it, and
//! a close that lingers (what the client still sends is read and dropped) so that our last
//! answer is not destroyed by a reset. The listener makes it; the relay takes the socket back.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::connect::Mark;

/// How long, and how much, a closing connection keeps reading what the client still sends.
const LINGER_FOR: Duration = Duration::from_secs(5);
const LINGER_BYTES: usize = 16 * 1024 * 1024;

/// A client socket whose close lingers: after our last byte (a FIN), what the client is
/// still sending (a request body we answered without reading) is read and dropped, bounded,
/// so that the kernel does not answer it with a reset that destroys our answer in flight.
/// It also gives back first the bytes read past a PROXY protocol header.
pub struct ClientStream {
    stream: TcpStream,
    prefix: Bytes,
    linger: Option<(Pin<Box<tokio::time::Sleep>>, usize)>,
    /// The DSCP the service wants on the answers, and the one the socket has.
    pub mark: Arc<Mark>,
    marked: u8,
}

impl ClientStream {
    pub fn new(stream: TcpStream, prefix: Bytes) -> ClientStream {
        ClientStream {
            stream,
            prefix,
            linger: None,
            mark: Arc::default(),
            marked: 0,
        }
    }

    /// Applies the wanted DSCP if it changed since the last write.
    fn apply_mark(&mut self) {
        let want = self.mark.get();
        if want != self.marked {
            crate::connect::set_dscp(&self.stream, Some(want).filter(|d| *d != 0));
            self.marked = want;
        }
    }

    /// The socket, and what of the prefix was not read yet.
    pub fn into_parts(self) -> (TcpStream, Bytes) {
        (self.stream, self.prefix)
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let head = self.prefix.split_to(n);
            buf.put_slice(&head);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.apply_mark();
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.apply_mark();
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.linger.is_none() {
            std::task::ready!(Pin::new(&mut this.stream).poll_shutdown(cx))?;
            this.linger = Some((Box::pin(tokio::time::sleep(LINGER_FOR)), 0));
        }
        let Some((deadline, drained)) = this.linger.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let mut scratch = [0u8; 8192];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.stream).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {
                    *drained += buf.filled().len();
                    if *drained > LINGER_BYTES {
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => {
                    return match deadline.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Ok(())),
                        Poll::Pending => Poll::Pending,
                    }
                }
            }
        }
    }
}
