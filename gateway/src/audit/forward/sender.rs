//! A stream forwarder's sender: one thread that connects to the collector (TCP, TLS through
//! rustls), sends the spool's messages in order (octet-counted syslog, or RELP commands
//! within a window), and moves the spool's position when they are delivered; on any failure
//! it reconnects with a back-off and starts again from the first message not delivered.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;

use super::relp::{self, Frame, Response};
use super::spool::{Cursor, Message, Spool};
use super::{Forwarder, Protocol};
use crate::audit::syslog;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A collector that takes nothing for this long is given up on, and reconnected to.
const WRITE_TIMEOUT: Duration = Duration::from_secs(15);
/// RELP: a collector that acknowledges nothing for this long is reconnected to (what it had
/// not acknowledged is sent again).
const ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// Unacknowledged RELP commands at most (rsyslog's omrelp uses 128).
const WINDOW: usize = 128;
/// Messages per write for plain syslog.
const BATCH: usize = 256;
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// How to reach the collector.
pub(crate) struct Endpoint {
    pub host: String,
    pub port: u16,
    pub tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
}

enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => &s.sock,
        }
    }

    /// Whether the collector closed its end (or, with `data_means_closing`, sent anything:
    /// a syslog collector never speaks, so bytes from it are its TLS close).
    fn peer_gone(&self, data_means_closing: bool) -> bool {
        let tcp = self.tcp();
        if tcp.set_nonblocking(true).is_err() {
            return true;
        }
        let gone = match tcp.peek(&mut [0u8; 1]) {
            Ok(0) => true,
            Ok(_) => data_means_closing,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        };
        let _ = tcp.set_nonblocking(false);
        gone
    }

    fn close(mut self) {
        if let Conn::Tls(s) = &mut self {
            s.conn.send_close_notify();
            let _ = s.conn.complete_io(&mut s.sock);
        }
        let _ = self.tcp().shutdown(std::net::Shutdown::Both);
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

fn connect(endpoint: &Endpoint) -> Result<Conn, String> {
    let addrs = (endpoint.host.as_str(), endpoint.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", endpoint.host))?;
    let mut last = format!("{} has no address", endpoint.host);
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(tcp) => {
                let _ = tcp.set_nodelay(true);
                let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(
                    &socket2::TcpKeepalive::new()
                        .with_time(Duration::from_secs(30))
                        .with_interval(Duration::from_secs(10)),
                );
                let _ = tcp.set_write_timeout(Some(WRITE_TIMEOUT));
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(1)));
                return match &endpoint.tls {
                    None => Ok(Conn::Plain(tcp)),
                    Some((config, name)) => handshake(tcp, config.clone(), name.clone()),
                };
            }
            Err(e) => last = format!("cannot connect to {addr}: {e}"),
        }
    }
    Err(last)
}

/// The TLS handshake, done now so that a certificate problem is said as one.
fn handshake(
    mut tcp: TcpStream,
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
) -> Result<Conn, String> {
    let shown = name.to_str().into_owned();
    let mut conn = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut tcp) {
            let timeout = matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            );
            if !timeout || Instant::now() > deadline {
                return Err(format!(
                    "TLS with the collector (expecting the name {shown}): {e}"
                ));
            }
        }
    }
    Ok(Conn::Tls(Box::new(rustls::StreamOwned::new(conn, tcp))))
}

/// The sender's life: connect, deliver, reconnect, until the gateway stops.
pub(crate) fn run(forwarder: Arc<Forwarder>, spool: Arc<Spool>, endpoint: Endpoint) {
    let mut backoff = Duration::from_secs(1);
    let mut cursor = Cursor::default();
    loop {
        if forwarder.done(&spool) {
            return;
        }
        let conn = match connect(&endpoint) {
            Ok(conn) => conn,
            Err(e) => {
                forwarder.failed(&e);
                // The oldest waiting message's age, for the status, while the collector is away.
                spool.rewind(&mut cursor);
                let _ = spool.fetch(&mut cursor, 1, Duration::ZERO);
                if forwarder.pause(backoff) {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        forwarder.connected(true);
        spool.rewind(&mut cursor);
        let outcome = match forwarder.protocol {
            Protocol::Syslog => syslog_session(&forwarder, &spool, &mut cursor, conn),
            Protocol::Relp => relp_session(&forwarder, &spool, &mut cursor, conn),
        };
        forwarder.connected(false);
        match outcome {
            Ok(delivered) => {
                if delivered {
                    backoff = Duration::from_secs(1);
                }
            }
            Err((e, delivered)) => {
                forwarder.failed(&e);
                if delivered {
                    backoff = Duration::from_secs(1);
                }
                if forwarder.pause(backoff) {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// `Ok(delivered anything)` when the session ended because the gateway stops; `Err((why,
/// delivered anything))` otherwise.
type Session = Result<bool, (String, bool)>;

fn syslog_session(f: &Forwarder, spool: &Spool, cursor: &mut Cursor, mut conn: Conn) -> Session {
    let mut delivered = false;
    let mut frames = Vec::with_capacity(64 * 1024);
    loop {
        let batch = spool
            .fetch(cursor, BATCH, Duration::from_millis(500))
            .map_err(|e| (format!("cannot read the spool: {e}"), delivered))?;
        if batch.is_empty() {
            if f.done(spool) {
                conn.close();
                return Ok(delivered);
            }
            if conn.peer_gone(true) {
                return Err(("the collector closed the connection".into(), delivered));
            }
            continue;
        }
        // What goes into a socket the collector already closed is lost without a word:
        // look before writing.
        if conn.peer_gone(true) {
            return Err(("the collector closed the connection".into(), delivered));
        }
        frames.clear();
        for m in &batch {
            syslog::frame(&m.bytes, &mut frames);
        }
        conn.write_all(&frames)
            .and_then(|()| conn.flush())
            .map_err(|e| (format!("cannot write to the collector: {e}"), delivered))?;
        let last = batch.last().map_or(0, |m| m.index);
        spool.commit(last + 1, None);
        f.delivered(batch.len() as u64);
        delivered = true;
    }
}

/// Reads whatever frames are there, waiting up to the socket's read timeout for the first.
fn read_frames(conn: &mut Conn, buf: &mut Vec<u8>) -> Result<Vec<Frame>, String> {
    let mut chunk = [0u8; 8192];
    match conn.read(&mut chunk) {
        Ok(0) => return Err("the collector closed the connection".into()),
        Ok(n) => buf.extend_from_slice(&chunk[..n]),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        Err(e) => return Err(format!("cannot read from the collector: {e}")),
    }
    let mut frames = Vec::new();
    while let Some((frame, used)) = relp::decode(buf).map_err(|e| e.to_string())? {
        buf.drain(..used);
        frames.push(frame);
    }
    Ok(frames)
}

/// Waits for the answer to `txnr`.
fn answer(conn: &mut Conn, buf: &mut Vec<u8>, txnr: u64) -> Result<Response, String> {
    let deadline = Instant::now() + ACK_TIMEOUT;
    loop {
        for frame in read_frames(conn, buf)? {
            if frame.txnr == txnr && frame.command == "rsp" {
                return Response::parse(&frame.data).map_err(|e| e.to_string());
            }
        }
        if Instant::now() > deadline {
            return Err(format!("no answer from the collector in {ACK_TIMEOUT:?}"));
        }
    }
}

fn relp_session(f: &Forwarder, spool: &Spool, cursor: &mut Cursor, mut conn: Conn) -> Session {
    let mut buf = Vec::new();
    let mut out = Vec::with_capacity(64 * 1024);
    relp::encode(1, "open", &relp::open_offers(), &mut out);
    conn.write_all(&out)
        .and_then(|()| conn.flush())
        .map_err(|e| (format!("cannot write to the collector: {e}"), false))?;
    let opened = answer(&mut conn, &mut buf, 1).map_err(|e| (e, false))?;
    relp::check_open(&opened).map_err(|e| (e, false))?;
    let mut txnr = 1;
    // Sent, not yet acknowledged: (txnr, message).
    let mut unacked: std::collections::VecDeque<(u64, Message)> = Default::default();
    let mut delivered = false;
    let mut waiting_since: Option<Instant> = None;
    loop {
        let room = WINDOW - unacked.len();
        let wait = if unacked.is_empty() {
            Duration::from_millis(500)
        } else {
            Duration::ZERO
        };
        let batch = if room > 0 {
            spool
                .fetch(cursor, room, wait)
                .map_err(|e| (format!("cannot read the spool: {e}"), delivered))?
        } else {
            Vec::new()
        };
        if !batch.is_empty() {
            out.clear();
            for m in batch {
                txnr = relp::next_txnr(txnr);
                relp::encode(txnr, "syslog", &m.bytes, &mut out);
                unacked.push_back((txnr, m));
            }
            conn.write_all(&out)
                .and_then(|()| conn.flush())
                .map_err(|e| (format!("cannot write to the collector: {e}"), delivered))?;
            waiting_since.get_or_insert_with(Instant::now);
        }
        if unacked.is_empty() {
            if f.done(spool) {
                out.clear();
                txnr = relp::next_txnr(txnr);
                relp::encode(txnr, "close", b"", &mut out);
                if conn.write_all(&out).and_then(|()| conn.flush()).is_ok() {
                    let _ = answer(&mut conn, &mut buf, txnr);
                }
                conn.close();
                return Ok(delivered);
            }
            if conn.peer_gone(false) {
                return Err(("the collector closed the connection".into(), delivered));
            }
            continue;
        }
        let frames = read_frames(&mut conn, &mut buf).map_err(|e| (e, delivered))?;
        let mut acked = 0;
        for frame in frames {
            if frame.txnr == 0 && frame.command == "serverclose" {
                return Err((
                    "the collector closed the session (serverclose)".into(),
                    delivered,
                ));
            }
            let Some((expected, _)) = unacked.front() else {
                return Err((
                    format!("an answer to {} that was not asked", frame.txnr),
                    delivered,
                ));
            };
            if frame.command != "rsp" || frame.txnr != *expected {
                return Err((
                    format!(
                        "the collector answered {} {} where {expected} was due",
                        frame.txnr, frame.command
                    ),
                    delivered,
                ));
            }
            let response = Response::parse(&frame.data).map_err(|e| (e.to_string(), delivered))?;
            if !response.ok() {
                // Sent again in the next session; a collector that refuses one message for
                // good holds the spool, and the status says so.
                return Err((
                    format!("the collector refused a message: {response}"),
                    delivered,
                ));
            }
            unacked.pop_front();
            acked += 1;
        }
        if acked > 0 {
            let upto = unacked.front().map_or(cursor.index(), |(_, m)| m.index);
            spool.commit(upto, unacked.front().map(|(_, m)| m.ms));
            f.delivered(acked);
            delivered = true;
            waiting_since = (!unacked.is_empty()).then(Instant::now);
        } else if waiting_since.is_some_and(|t| t.elapsed() > ACK_TIMEOUT) {
            return Err((
                format!("no acknowledgement from the collector in {ACK_TIMEOUT:?}"),
                delivered,
            ));
        }
    }
}

/// `doctor`'s check: connect, shake hands (TLS: the certificate and its name), and for RELP
/// open and close a session; what was proven, or why not.
pub(crate) fn probe(endpoint: &Endpoint, protocol: Protocol) -> Result<String, String> {
    let mut conn = connect(endpoint)?;
    let mut proven = match endpoint.tls {
        Some((_, ref name)) => format!(
            "TLS established, the collector's certificate is valid for {}",
            name.to_str()
        ),
        None => "TCP connection established (no TLS: readable on the way)".to_string(),
    };
    if protocol == Protocol::Relp {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        relp::encode(1, "open", &relp::open_offers(), &mut out);
        relp::encode(2, "close", b"", &mut out);
        conn.write_all(&out)
            .and_then(|()| conn.flush())
            .map_err(|e| format!("cannot write to the collector: {e}"))?;
        let opened = answer(&mut conn, &mut buf, 1)?;
        relp::check_open(&opened)?;
        let _ = answer(&mut conn, &mut buf, 2);
        proven.push_str("; a RELP session opened and closed");
    }
    conn.close();
    Ok(proven)
}
