//! The proxy listeners: accept (connection limits), serve one client connection (HTTP/1.1,
//! keep-alive, CONNECT upgrades), refuse what the limits refuse, and close so that the last
//! answer reaches the client (a lingering close).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use std::time::Duration;

use bytes::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::record::{AuditEvent, Decision, EventKind, Reason};
use passerelle_config::ClientInfo;

use crate::client_stream::ClientStream;
use crate::limits::{Admitted, Refusal};
use crate::service::{self, Shared};

/// Accepts proxy clients until `closing`: each within the connection limits is served in a
/// tracked task (shutdown waits for it); the others are refused. A connection from a load
/// balancer in `listen.proxy_protocol_from` first gives the real client (PROXY protocol).
pub async fn accept(listener: TcpListener, shared: Arc<Shared>, closing: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = closing.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let runtime = shared.runtime.load();
                if runtime.config.listen.expects_proxy_protocol(peer.ip()) {
                    let timeout = runtime.config.limits.header_timeout;
                    let (shared, closing) = (shared.clone(), closing.clone());
                    shared.clone().tracker.spawn(async move {
                        let mut stream = stream;
                        match proxy_header(&mut stream, timeout).await {
                            Ok((client, early)) => {
                                let client = client.unwrap_or(peer);
                                if let Some(task) = admit(stream, client, early, &shared, closing) {
                                    task.await;
                                }
                            }
                            Err(why) => refuse_proxy_protocol(peer, why, &shared),
                        }
                    });
                } else if let Some(task) =
                    admit(stream, peer, Bytes::new(), &shared, closing.clone())
                {
                    shared.tracker.spawn(task);
                }
            }
            Err(e) => {
                // Out of file descriptors and the like: do not spin.
                tracing::warn!(error = %e, "accept.failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Within the allow list and the connection limits: the task serving the connection.
fn admit(
    stream: TcpStream,
    client: SocketAddr,
    early: Bytes,
    shared: &Arc<Shared>,
    closing: CancellationToken,
) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
    let runtime = shared.runtime.load();
    // Outside the allow list: no share of the connection budget, not even idle.
    if !runtime
        .config
        .policy
        .client_allowed(&ClientInfo { addr: client })
    {
        refuse(stream, client, Refusal::NotAllowed, shared);
        return None;
    }
    let limits = runtime.config.limits.clone();
    drop(runtime);
    match shared
        .connections
        .admit(client.ip().to_canonical(), &limits)
    {
        Ok(admitted) => Some(serve(
            ClientStream::new(stream, early),
            client,
            Arc::new(admitted),
            shared.clone(),
            closing,
        )),
        Err(refusal) => {
            refuse(stream, client, refusal, shared);
            None
        }
    }
}

/// The longest PROXY protocol header (v2 with a few TLVs; v1 is at most 107 bytes).
const MAX_PROXY_HEADER: usize = 1024;

/// Reads a PROXY protocol header, v1 or v2: the client it carries (`None` for a LOCAL or
/// UNKNOWN header: the balancer's own health check), and the bytes read past it.
async fn proxy_header(
    stream: &mut TcpStream,
    timeout: Duration,
) -> Result<(Option<SocketAddr>, Bytes), String> {
    use ppp::{HeaderResult, PartialResult};
    let deadline = crate::limits::deadline(tokio::time::Instant::now(), timeout);
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => return Err("no PROXY protocol header in time".to_string()),
            Ok(Err(e)) => {
                return Err(format!(
                    "the connection failed before its PROXY header: {e}"
                ))
            }
            Ok(Ok(0)) => return Err("the connection closed before its PROXY header".to_string()),
            Ok(Ok(n)) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let parsed = HeaderResult::parse(&buf);
        if parsed.is_incomplete() && buf.len() < MAX_PROXY_HEADER {
            continue;
        }
        let (client, used) = match parsed {
            HeaderResult::V1(Ok(h)) => {
                let client = match h.addresses {
                    ppp::v1::Addresses::Tcp4(a) => {
                        Some(SocketAddr::new(a.source_address.into(), a.source_port))
                    }
                    ppp::v1::Addresses::Tcp6(a) => {
                        Some(SocketAddr::new(a.source_address.into(), a.source_port))
                    }
                    ppp::v1::Addresses::Unknown => None,
                };
                (client, h.header.len())
            }
            HeaderResult::V2(Ok(h)) => {
                let client = match (h.command, h.addresses) {
                    (ppp::v2::Command::Local, _) => None,
                    (_, ppp::v2::Addresses::IPv4(a)) => {
                        Some(SocketAddr::new(a.source_address.into(), a.source_port))
                    }
                    (_, ppp::v2::Addresses::IPv6(a)) => {
                        Some(SocketAddr::new(a.source_address.into(), a.source_port))
                    }
                    _ => None,
                };
                (client, h.len())
            }
            _ => {
                return Err("the connection does not start with a PROXY protocol header".to_string())
            }
        };
        return Ok((client, Bytes::copy_from_slice(&buf[used..])));
    }
}

/// A balancer's connection without a valid PROXY header: closed, audited.
fn refuse_proxy_protocol(peer: SocketAddr, why: String, shared: &Shared) {
    shared.audit.refusal(AuditEvent {
        event: EventKind::Request,
        client: Some(peer.to_string()),
        decision: Some(Decision::Deny),
        reason: Some(Reason::ProxyProtocol),
        detail: Some(format!("{why} (listen.proxy_protocol_from requires one)")),
        ..AuditEvent::default()
    });
}

/// Outside the allow list or over the total: closed before reading. Over the client's share:
/// a short 503. Audited (a flood is folded into counts, see [`AuditLog::refusal`]).
///
/// [`AuditLog::refusal`]: crate::audit::AuditLog::refusal
fn refuse(stream: TcpStream, client: SocketAddr, refusal: Refusal, shared: &Shared) {
    shared.audit.refusal(AuditEvent {
        event: EventKind::Request,
        client: Some(client.to_string()),
        decision: Some(Decision::Deny),
        reason: Some(refusal.reason()),
        detail: (refusal == Refusal::NotAllowed)
            .then(|| "not in clients.allow: closed at accept".to_string()),
        status: (refusal == Refusal::PerClient).then_some(503),
        ..AuditEvent::default()
    });
    if refusal == Refusal::PerClient {
        tokio::spawn(async move {
            let mut stream = stream;
            let body = "passerelle: too many connections from this client\n";
            let response = format!(
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\
                 Content-Length: {}\r\nConnection: close\r\nRetry-After: 1\r\n\r\n{body}",
                body.len()
            );
            let write = stream.write_all(response.as_bytes());
            let _ = tokio::time::timeout(Duration::from_secs(2), write).await;
        });
    }
}

/// One client connection: HTTP/1.1 with keep-alive and CONNECT upgrades. `slot` is the
/// client's place in the connection limits; a tunnel takes a share of it and keeps it until
/// the tunnel closes.
async fn serve(
    stream: ClientStream,
    client: SocketAddr,
    slot: Arc<Admitted>,
    shared: Arc<Shared>,
    closing: CancellationToken,
) {
    let limits = shared.runtime.load().config.limits.clone();
    let stop = shared.stop.clone();
    let served = Arc::new(AtomicBool::new(false));
    let service = {
        let (shared, served) = (shared.clone(), served.clone());
        let conn = service::Connection {
            client,
            slot,
            within: None,
            mark: stream.mark.clone(),
        };
        service_fn(move |req| {
            served.store(true, Ordering::Relaxed);
            service::handle(shared.clone(), conn.clone(), req)
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes as usize)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        _ = closing.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                ended = conn.as_mut() => ended,
                _ = stop.cancelled() => Ok(()),
            }
        }
    };
    if let Err(error) = ended {
        audit_connection_error(&shared, client, &error, served.load(Ordering::Relaxed));
    }
}

/// Requests hyper refused before they reached the request path (it answered 400 or 431
/// itself, or cut a slow head) still get their record. A keep-alive connection that went
/// quiet after its requests is not a refusal: it is counted, not audited.
fn audit_connection_error(shared: &Shared, client: SocketAddr, error: &hyper::Error, served: bool) {
    let (reason, status) = if error.is_parse_too_large() {
        (Reason::HeaderTooLarge, Some(431))
    } else if error.is_parse() {
        (Reason::MalformedRequest, Some(400))
    } else if error.is_timeout() && served {
        shared.audit.metrics().idle_connection_closed();
        return;
    } else if error.is_timeout() {
        (Reason::HeaderTimeout, None)
    } else {
        return;
    };
    shared.audit.event(AuditEvent {
        event: EventKind::Request,
        client: Some(client.to_string()),
        decision: Some(Decision::Deny),
        reason: Some(reason),
        detail: Some(error.to_string()),
        status,
        ..AuditEvent::default()
    });
}
