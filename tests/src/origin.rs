//! Origins for the suites, on 127.0.0.1: an HTTP server that reports what it received, a TLS
//! server with a certificate made for the test, and raw TCP peers (half-close, silence).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type OutBody = UnsyncBoxBody<Bytes, Infallible>;

/// FNV-1a 64: the checksum the echo origin reports for request bodies.
pub fn fnv1a(data: &[u8], mut hash: u64) -> u64 {
    for b in data {
        hash ^= *b as u64;
        hash = hash.wrapping_mul(0x100000001b3);
    }
    hash
}
pub const FNV_OFFSET: u64 = 0xcbf29ce484222325;

/// An HTTP/1.1 origin. `/bytes/N` streams N bytes; `/slow/N` streams N 1 KiB pieces, one
/// every 100 ms; `/delay/MS` reads the request, waits MS milliseconds, then answers like the
/// rest; anything else answers JSON describing the request (method, path, headers, body
/// length and FNV-1a checksum). Every request it read to its end is logged ([`HttpOrigin::seen`]).
pub struct HttpOrigin {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    seen: Seen,
    /// Streamed answers (`/bytes/`, `/slow/`) whose last byte the origin has sent.
    finished: Arc<AtomicUsize>,
}

/// A request as the origin received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub body_len: u64,
    pub body_fnv: String,
}

type Seen = Arc<Mutex<Vec<Received>>>;

impl HttpOrigin {
    pub async fn start() -> HttpOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = listener.local_addr().expect("origin address");
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Seen::default();
        let finished = Arc::new(AtomicUsize::new(0));
        let (counter, log, done) = (connections.clone(), seen.clone(), finished.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let (log, done) = (log.clone(), done.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(req, log.clone(), done.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        HttpOrigin {
            addr,
            connections,
            seen,
            finished,
        }
    }

    /// Streamed answers whose last byte the origin has sent: one not counted yet is still on
    /// its way, whatever the clock says.
    pub fn finished(&self) -> usize {
        self.finished.load(Ordering::SeqCst)
    }

    /// Connections accepted so far (keep-alive reuse shows as fewer connections than requests).
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Every request read to its end so far, in order.
    pub fn seen(&self) -> Vec<Received> {
        self.seen.lock().expect("origin log").clone()
    }

    /// The requests received for `path`.
    pub fn seen_for(&self, path: &str) -> Vec<Received> {
        self.seen().into_iter().filter(|r| r.path == path).collect()
    }

    /// Waits (bounded) until the origin has received `n` requests, and returns them.
    pub async fn wait_seen(&self, n: usize) -> Vec<Received> {
        crate::harness::wait_until(Duration::from_secs(20), || async {
            let seen = self.seen();
            match seen.len() >= n {
                true => Ok(seen),
                false => Err(format!(
                    "the origin saw {} requests, waited for {n}",
                    seen.len()
                )),
            }
        })
        .await
    }
}

async fn answer(
    req: Request<Incoming>,
    log: Seen,
    finished: Arc<AtomicUsize>,
) -> Result<Response<OutBody>, Infallible> {
    let path = req.uri().path().to_string();
    // The streaming answers do not read a body: they are logged as they start.
    let started = |log: &Seen| {
        log.lock().expect("origin log").push(Received {
            method: req.method().to_string(),
            path: path.clone(),
            body_len: 0,
            body_fnv: format!("{FNV_OFFSET:016x}"),
        })
    };
    if let Some(n) = path
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<u64>().ok())
    {
        started(&log);
        return Ok(Response::new(
            Pattern {
                left: n,
                delay: None,
                finished,
            }
            .boxed_unsync(),
        ));
    }
    if let Some(n) = path
        .strip_prefix("/slow/")
        .and_then(|n| n.parse::<u64>().ok())
    {
        started(&log);
        let body = Pattern {
            left: n * 1024,
            delay: Some(Box::pin(tokio::time::sleep(Duration::from_millis(100)))),
            finished,
        };
        return Ok(Response::new(body.boxed_unsync()));
    }
    let delay = path
        .strip_prefix("/delay/")
        .and_then(|ms| ms.parse::<u64>().ok());
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let mut headers = serde_json::Map::new();
    for (name, value) in req.headers() {
        let entry = headers
            .entry(name.as_str().to_string())
            .or_insert_with(|| serde_json::Value::Array(vec![]));
        if let serde_json::Value::Array(list) = entry {
            list.push(
                String::from_utf8_lossy(value.as_bytes())
                    .into_owned()
                    .into(),
            );
        }
    }
    let mut body = req.into_body();
    let mut len = 0u64;
    let mut hash = FNV_OFFSET;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Some(data) = frame.data_ref() {
            len += data.len() as u64;
            hash = fnv1a(data, hash);
        }
    }
    log.lock().expect("origin log").push(Received {
        method: method.clone(),
        path: path.clone(),
        body_len: len,
        body_fnv: format!("{hash:016x}"),
    });
    if let Some(ms) = delay {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let report = serde_json::json!({
        "method": method, "uri": uri, "path": path, "headers": headers,
        "body_len": len, "body_fnv": format!("{hash:016x}"),
    });
    let mut resp = Response::new(Full::new(Bytes::from(report.to_string())).boxed_unsync());
    resp.headers_mut()
        .insert("content-type", "application/json".parse().expect("header"));
    resp.headers_mut()
        .insert("x-origin-hop", "secret".parse().expect("header"));
    resp.headers_mut()
        .insert("connection", "x-origin-hop".parse().expect("header"));
    Ok(resp)
}

/// `left` bytes of a repeating pattern, in 64 KiB frames (or 1 KiB every 100 ms when slow).
struct Pattern {
    left: u64,
    delay: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Counts this answer once its last piece is out.
    finished: Arc<AtomicUsize>,
}

impl Body for Pattern {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let piece = if let Some(delay) = self.delay.as_mut() {
            if delay.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let next = tokio::time::Instant::now() + Duration::from_millis(100);
            delay.as_mut().reset(next);
            1024
        } else {
            64 * 1024
        };
        static CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];
        let n = piece.min(self.left) as usize;
        self.left -= n as u64;
        if self.left == 0 {
            self.finished.fetch_add(1, Ordering::SeqCst);
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK[..n])))))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}

/// A TLS origin for `names`, with a self-signed certificate written to `ca_pem` (for curl's
/// `--cacert`). It answers every request with `hello over TLS from <sni>`.
pub struct TlsOrigin {
    pub addr: SocketAddr,
    pub ca_pem: PathBuf,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
}

impl TlsOrigin {
    pub async fn start(names: &[&str], dir: &std::path::Path) -> TlsOrigin {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let cert = rcgen::generate_simple_self_signed(names).expect("test certificate");
        let ca_pem = dir.join("origin-cert.pem");
        std::fs::write(&ca_pem, cert.cert.pem()).expect("write certificate");
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind TLS origin");
        let addr = listener.local_addr().expect("address");
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let sni = tls.get_ref().1.server_name().unwrap_or("none").to_string();
                    let service = service_fn(move |_req: Request<Incoming>| {
                        let text = format!("hello over TLS from {sni}\n");
                        async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text)))) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        TlsOrigin {
            addr,
            ca_pem,
            accepted,
        }
    }

    /// TCP connections accepted so far: which peer a tunnel reached.
    pub fn connections(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A raw TCP peer on 127.0.0.1 serving each connection with `serve`, in a task of its own.
async fn raw_peer<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream));
        }
    });
    addr
}

/// A raw TCP peer that reads until the client half-closes, then answers `got N bytes` and
/// closes: a tunnel that does not pass on half-close never gets the answer.
pub async fn half_close_peer() -> SocketAddr {
    raw_peer(|mut stream| async move {
        let mut buf = Vec::new();
        if stream.read_to_end(&mut buf).await.is_ok() {
            let _ = stream
                .write_all(format!("got {} bytes", buf.len()).as_bytes())
                .await;
            let _ = stream.shutdown().await;
        }
    })
    .await
}

/// A raw TCP peer that sends back everything it reads, and half-closes when the client does.
pub async fn echo_peer() -> SocketAddr {
    raw_peer(|mut stream| async move {
        let (mut r, mut w) = stream.split();
        if tokio::io::copy(&mut r, &mut w).await.is_ok() {
            let _ = w.shutdown().await;
        }
    })
    .await
}

/// A raw TCP peer that accepts and says nothing, holding the connection open.
pub async fn silent_peer() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

/// A local port whose listener never accepts and whose queue is already full: a connection
/// attempt gets no answer at all (its SYN is dropped), as behind a firewall that drops. Open as
/// long as this lives.
pub struct Unanswering {
    pub addr: SocketAddr,
    _listener: socket2::Socket,
    _filler: std::net::TcpStream,
}

impl Unanswering {
    pub fn start() -> Unanswering {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("a socket");
        socket
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .expect("bind");
        socket.listen(0).expect("listen");
        let addr = socket
            .local_addr()
            .expect("address")
            .as_socket()
            .expect("an inet address");
        let filler = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))
            .expect("the one connection the queue takes");
        Unanswering {
            addr,
            _listener: socket,
            _filler: filler,
        }
    }
}

/// A local port with nothing listening on it.
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("address")
}

/// An origin whose kept-alive connections die after reading their second request, without
/// answering it: the gateway's pooled connection breaks *after* the request reached the
/// origin. The first request on each connection gets `200` with `Content-Length`. Every
/// request read is logged as `METHOD path`.
pub struct FlakyOrigin {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

impl FlakyOrigin {
    pub async fn start() -> FlakyOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let mut stream = tokio::io::BufReader::new(stream);
                    for n in 1.. {
                        let Some((line, length)) = read_request(&mut stream).await else {
                            return;
                        };
                        let mut body = vec![0u8; length];
                        if stream.read_exact(&mut body).await.is_err() {
                            return;
                        }
                        let mut words = line.split_whitespace();
                        let method = words.next().unwrap_or("").to_string();
                        let target = words.next().unwrap_or("").to_string();
                        log.lock().expect("log").push(format!("{method} {target}"));
                        if n >= 2 {
                            return;
                        }
                        let body = format!("answer {n}");
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if stream.get_mut().write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        FlakyOrigin { addr, seen }
    }

    /// The requests read so far, `METHOD path`.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("log").clone()
    }
}

/// A request line and its `Content-Length` (0 when absent), or `None` at the end.
async fn read_request(
    stream: &mut tokio::io::BufReader<tokio::net::TcpStream>,
) -> Option<(String, usize)> {
    use tokio::io::AsyncBufReadExt;
    let mut line = String::new();
    if stream.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let mut length = 0;
    loop {
        let mut header = String::new();
        if stream.read_line(&mut header).await.ok()? == 0 {
            return None;
        }
        let header = header.trim_end();
        if header.is_empty() {
            return Some((line.trim_end().to_string(), length));
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            }
        }
    }
}
