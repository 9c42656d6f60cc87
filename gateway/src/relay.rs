//! Tunnels: bytes copied both ways until both sides close (half-close passed on), the idle
//! timeout passes, or shutdown's grace ends. Byte counts feed the audit as they flow.
//! TCP to TCP (the common, direct case) skips hyper's wrapper, allocates buffers only while
//! data flows, so idle tunnels (the visio's) cost a few KiB, and moves bulk with `splice(2)`.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use passerelle_config::{Flow, Host};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::audit::Recorder;
use crate::body::Direction;
use crate::connect::BoxedIo;
use crate::limits::deadline;
use crate::record::Reason;
use crate::sni::{self, Hello};

/// How a tunnel runs: its idle timeout, and the SNI check on a flow's TLS port.
pub struct Plan {
    pub idle: Duration,
    pub sni: Option<SniRule>,
}

pub struct SniRule {
    pub target: Host,
    pub flow: Arc<Flow>,
    pub timeout: Duration,
}

/// The client's side of a tunnel, once hyper hands it over: the plain TCP stream when it
/// can (the fast path), with the bytes hyper had already read.
pub fn client_side(upgraded: Upgraded) -> (Side, Bytes) {
    match upgraded.downcast::<TokioIo<crate::client_stream::ClientStream>>() {
        Ok(parts) => {
            let (stream, prefix) = parts.io.into_inner().into_parts();
            // What hyper read came first; a prefix left over (from a PROXY header read) next.
            let early = if prefix.is_empty() {
                parts.read_buf
            } else {
                [parts.read_buf, prefix].concat().into()
            };
            (Side::Tcp(stream), early)
        }
        Err(upgraded) => (Side::Io(Box::new(TokioIo::new(upgraded))), Bytes::new()),
    }
}

/// One side of a tunnel: TCP (relayed with readiness and lazily allocated buffers), or any
/// other stream (TLS to a parent, a tunnel through a parent).
pub enum Side {
    Tcp(TcpStream),
    Io(BoxedIo),
}

impl Side {
    fn io(self) -> BoxedIo {
        match self {
            Side::Tcp(s) => Box::new(s),
            Side::Io(io) => io,
        }
    }

    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Side::Tcp(s) => s.write_all(bytes).await,
            Side::Io(io) => io.write_all(bytes).await,
        }
    }
}

/// Checks the ClientHello when the plan says so, relays until the end, and records how it
/// ended. `early` holds client bytes read before the tunnel was handed over.
pub async fn tunnel(
    mut client: Side,
    early: Bytes,
    mut upstream: Side,
    plan: Plan,
    record: Recorder,
    stop: CancellationToken,
) {
    // Copied out so hyper's whole read buffer is not kept alive by a slice of it.
    let mut first = early.to_vec();
    drop(early);
    if let Some(rule) = &plan.sni {
        // Boxed: its read buffer lives on the heap for the check only, not in every
        // tunnel's future for the tunnel's whole life.
        let hello = tokio::select! {
            hello = Box::pin(read_hello(&mut client, rule.timeout, &mut first)) => hello,
            _ = stop.cancelled() => Hello::Closed,
        };
        if let Hello::Name(name) = &hello {
            record.sni(Some(name.clone()));
        }
        if let Err(reason) = sni::verdict(&hello, &rule.target, &rule.flow) {
            // The client already has its 200 (the check reads the first bytes, which come
            // after it): the record says deny, with the reason, and status 200.
            let detail = format!("{}: the tunnel was closed", hello.describe(&rule.flow));
            record.deny(reason, detail, Some(&rule.flow.id));
            return;
        }
    }
    if !first.is_empty() {
        record.add_up(first.len() as u64);
        if upstream.write_all(&first).await.is_err() {
            record.reason(Reason::RelayError);
            return;
        }
    }
    drop(first);
    let epoch = Instant::now();
    let activity = Arc::new(AtomicU64::new(0));
    let meter = Meter {
        record: record.clone(),
        epoch,
        activity: activity.clone(),
    };
    let reason = match (client, upstream) {
        (Side::Tcp(a), Side::Tcp(b)) => {
            supervise(tcp_relay(a, b, &meter), &meter, plan.idle, &stop).await
        }
        (a, b) => {
            let mut a = Metered::new(a.io(), meter.clone(), Direction::Up);
            let mut b = Metered::new(b.io(), meter.clone(), Direction::Down);
            let copy = async {
                tokio::io::copy_bidirectional(&mut a, &mut b)
                    .await
                    .map(|_| ())
            };
            supervise(copy, &meter, plan.idle, &stop).await
        }
    };
    if let Some(reason) = reason {
        record.reason(reason);
    }
}

async fn read_hello(client: &mut Side, timeout: Duration, seen: &mut Vec<u8>) -> Hello {
    match client {
        Side::Tcp(s) => sni::read_client_hello(s, timeout, seen).await,
        Side::Io(io) => sni::read_client_hello(io, timeout, seen).await,
    }
}

/// Runs the copy until it ends, the tunnel has been idle for `idle`, or shutdown's grace ends.
async fn supervise(
    copy: impl std::future::Future<Output = std::io::Result<()>>,
    meter: &Meter,
    idle: Duration,
    stop: &CancellationToken,
) -> Option<Reason> {
    tokio::pin!(copy);
    loop {
        let last = meter.last_activity();
        tokio::select! {
            result = &mut copy => return match result {
                // TLS clients often reset rather than close once done: an ordinary end.
                Ok(()) => None,
                Err(e) if is_reset(&e) => None,
                Err(_) => Some(Reason::RelayError),
            },
            _ = tokio::time::sleep_until(deadline(last, idle)) => {
                if deadline(meter.last_activity(), idle) <= Instant::now() {
                    return Some(Reason::IdleTimeout);
                }
            }
            _ = stop.cancelled() => return Some(Reason::Shutdown),
        }
    }
}

/// Both ways at once. The first direction to end is passed on as a half-close; the second
/// needs none: closing both sockets, next, sends it.
async fn tcp_relay(a: TcpStream, b: TcpStream, meter: &Meter) -> std::io::Result<()> {
    let ended = AtomicBool::new(false);
    let up = pump(&a, &b, meter, Direction::Up, &ended);
    let down = pump(&b, &a, meter, Direction::Down, &ended);
    tokio::try_join!(up, down).map(|_| ())
}

/// Reads become possible before any buffer exists: an idle tunnel holds none. A few bytes (a
/// request, a keepalive) go through the stack and straight out when the other socket has
/// room, as it nearly always has. A read that fills the stack's chunk says bulk: the
/// direction then moves with `splice(2)`, socket to pipe to socket, without copying through
/// user space (through a buffer when the system grants no pipe of that size).
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    meter: &Meter,
    direction: Direction,
    ended: &AtomicBool,
) -> std::io::Result<()> {
    let mut pipe: Option<Pipe> = None;
    let mut bulk = BytesMut::new();
    loop {
        from.readable().await?;
        if let Some(pipe) = &pipe {
            match pipe.fill(from) {
                Ok(0) => return pass_end(to, ended),
                Ok(n) => {
                    meter.count(direction, n);
                    pipe.drain(to, n).await?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        } else if bulk.capacity() > 0 {
            match from.try_read_buf(&mut bulk) {
                Ok(0) => return pass_end(to, ended),
                Ok(n) => {
                    meter.count(direction, n);
                    write_all(to, &bulk).await?;
                    bulk.clear();
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        } else {
            let (n, rest) = match pass_on(from, to, meter, direction) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                result => result?,
            };
            if n == 0 {
                return pass_end(to, ended);
            }
            if !rest.is_empty() {
                write_all(to, &rest).await?;
            }
            if n == CHUNK {
                pipe = Pipe::new();
                if pipe.is_none() {
                    bulk.reserve(Pipe::SIZE);
                }
            }
        }
    }
}

/// The end of one direction: a half-close when it is the first to end.
fn pass_end(to: &TcpStream, ended: &AtomicBool) -> std::io::Result<()> {
    if ended.swap(true, Ordering::Relaxed) {
        return Ok(());
    }
    socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write)
}

async fn write_all(to: &TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        to.writable().await?;
        match to.try_write(bytes) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

const CHUNK: usize = 8 * 1024;

/// Reads what `from` has into a chunk on the stack (not in the tunnel's future: this is no
/// async fn) and writes it to `to` at once: how much was read (0 at the end of the stream),
/// and what `to` had no room for.
fn pass_on(
    from: &TcpStream,
    to: &TcpStream,
    meter: &Meter,
    direction: Direction,
) -> std::io::Result<(usize, Vec<u8>)> {
    let mut chunk = [0u8; CHUNK];
    let n = from.try_read(&mut chunk)?;
    if n == 0 {
        return Ok((0, Vec::new()));
    }
    meter.count(direction, n);
    let written = match to.try_write(&chunk[..n]) {
        Ok(k) => k,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    Ok((n, chunk[written..n].to_vec()))
}

/// A pipe between two sockets: what `splice(2)` moves bytes through inside the kernel.
struct Pipe {
    read: std::os::fd::OwnedFd,
    write: std::os::fd::OwnedFd,
}

impl Pipe {
    const SIZE: usize = 256 * 1024;

    /// A pipe of [`Pipe::SIZE`], when the system grants it (pipes beyond the per-user budget
    /// get less, and would move less per call than a buffer).
    fn new() -> Option<Pipe> {
        use rustix::pipe::{fcntl_setpipe_size, pipe_with, PipeFlags};
        let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK).ok()?;
        fcntl_setpipe_size(&write, Pipe::SIZE).ok()?;
        Some(Pipe { read, write })
    }

    /// Moves what `from` has into the empty pipe: 0 at the end of the stream, `WouldBlock`
    /// when nothing is there after all (the pipe being empty, never because it is full).
    fn fill(&self, socket: &TcpStream) -> std::io::Result<usize> {
        socket.try_io(tokio::io::Interest::READABLE, || {
            Ok(rustix::pipe::splice(
                socket,
                None,
                &self.write,
                None,
                Pipe::SIZE,
                rustix::pipe::SpliceFlags::MOVE | rustix::pipe::SpliceFlags::NONBLOCK,
            )?)
        })
    }

    /// Moves the `n` bytes in the pipe to `to`, waiting for room in its send buffer.
    async fn drain(&self, socket: &TcpStream, mut n: usize) -> std::io::Result<()> {
        while n > 0 {
            socket.writable().await?;
            let moved = socket.try_io(tokio::io::Interest::WRITABLE, || {
                Ok(rustix::pipe::splice(
                    &self.read,
                    None,
                    socket,
                    None,
                    n,
                    rustix::pipe::SpliceFlags::MOVE | rustix::pipe::SpliceFlags::NONBLOCK,
                )?)
            });
            match moved {
                Ok(k) => n -= k,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Counts bytes into the record and stamps the last activity.
#[derive(Clone)]
struct Meter {
    record: Recorder,
    epoch: Instant,
    activity: Arc<AtomicU64>,
}

impl Meter {
    fn count(&self, direction: Direction, n: usize) {
        match direction {
            Direction::Up => self.record.add_up(n as u64),
            Direction::Down => self.record.add_down(n as u64),
        }
        self.activity
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn last_activity(&self) -> Instant {
        self.epoch + Duration::from_millis(self.activity.load(Ordering::Relaxed))
    }
}

fn is_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::ConnectionAborted
    )
}

/// A stream that counts what it reads (the generic path).
struct Metered<S> {
    inner: S,
    meter: Meter,
    direction: Direction,
}

impl<S> Metered<S> {
    fn new(inner: S, meter: Meter, direction: Direction) -> Self {
        Metered {
            inner,
            meter,
            direction,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.meter.count(this.direction, n);
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
