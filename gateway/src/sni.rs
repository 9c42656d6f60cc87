//! The SNI check on CONNECT to a flow's TLS port: the ClientHello is parsed from a copy of
//! the client's first bytes (rustls' `Acceptor`, which copes with a hello split over records
//! and tiny segments); the same bytes are then relayed unchanged. ECH puts a public name in
//! SNI, so a mismatch is not always an attack; it is still not a documented flow.

use std::time::Duration;

use passerelle_config::{Flow, Host};
use tokio::io::{AsyncRead, AsyncReadExt};

/// A ClientHello larger than this is not one we will wait for.
const MAX_HELLO: usize = 64 * 1024;

/// What the first bytes of a tunnel turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    Name(String),
    NoName,
    NotTls,
    Timeout,
    Closed,
}

/// Reads from `client` into `seen` until a whole ClientHello is there (or it cannot be one).
/// Bytes already in `seen` (read before the tunnel was handed over) come first.
pub async fn read_client_hello<R: AsyncRead + Unpin>(
    client: &mut R,
    timeout: Duration,
    seen: &mut Vec<u8>,
) -> Hello {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut chunk = [0u8; 4096];
    let deadline = crate::limits::deadline(tokio::time::Instant::now(), timeout);
    let mut pending = std::mem::take(seen);
    loop {
        if pending.is_empty() {
            let n = match tokio::time::timeout_at(deadline, client.read(&mut chunk)).await {
                Err(_) => return Hello::Timeout,
                Ok(Err(_)) | Ok(Ok(0)) => return Hello::Closed,
                Ok(Ok(n)) => n,
            };
            pending.extend_from_slice(&chunk[..n]);
        }
        seen.extend_from_slice(&pending);
        let batch = std::mem::take(&mut pending);
        let mut fresh = batch.as_slice();
        loop {
            match acceptor.read_tls(&mut fresh) {
                Ok(0) if !fresh.is_empty() => return Hello::NotTls,
                Ok(_) => {}
                Err(_) => return Hello::NotTls,
            }
            match acceptor.accept() {
                Ok(Some(accepted)) => {
                    return match accepted.client_hello().server_name() {
                        Some(name) => Hello::Name(name.to_string()),
                        None => Hello::NoName,
                    }
                }
                Ok(None) if fresh.is_empty() => break,
                Ok(None) => {}
                Err(_) => return Hello::NotTls,
            }
        }
        if seen.len() >= MAX_HELLO {
            return Hello::NotTls;
        }
    }
}

/// Whether the hello fits the CONNECT target: its name must be the target's or a host of
/// the same flow. `Err` carries the audit reason.
pub fn verdict(hello: &Hello, target: &Host, flow: &Flow) -> Result<(), &'static str> {
    match hello {
        Hello::Name(name) => {
            let matches = match Host::parse(name) {
                Ok(host @ Host::Name(_)) if &host == target => true,
                Ok(Host::Name(n)) => flow.hosts.contains(&n),
                _ => false,
            };
            if matches {
                Ok(())
            } else {
                Err("sni_mismatch")
            }
        }
        Hello::NoName => match target {
            Host::Ip(_) => Ok(()),
            Host::Name(_) if flow.allow_no_sni => Ok(()),
            Host::Name(_) => Err("no_sni"),
        },
        Hello::NotTls => Err("not_tls"),
        Hello::Timeout => Err("sni_timeout"),
        Hello::Closed => Err("client_gone"),
    }
}
