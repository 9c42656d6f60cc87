//! The SNI check on CONNECT to a flow's TLS port: the ClientHello is parsed from a copy of
//! the client's first bytes (rustls' `Acceptor`, which copes with a hello split over records
//! and tiny segments); the same bytes are then relayed unchanged. ECH puts a public name in
//! SNI, so a mismatch is not always an attack; it is still not a documented flow.

use std::time::Duration;

use passerelle_config::{Flow, Host};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::audit::Reason;

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

impl Hello {
    /// What the first bytes were, in words (for the audit's `detail`).
    pub fn describe(&self, flow: &Flow) -> String {
        match self {
            Hello::Name(name) => format!(
                "the TLS ClientHello names {name}, not a host of flow {}",
                flow.id
            ),
            Hello::NoName => format!(
                "the TLS ClientHello names no server, and flow {} does not allow_no_sni",
                flow.id
            ),
            Hello::NotTls => format!(
                "the tunnel's first bytes are not a TLS ClientHello, and this is a TLS port of flow {}",
                flow.id
            ),
            Hello::Timeout => "no TLS ClientHello within limits.sni_timeout".to_string(),
            Hello::Closed => "the client closed the tunnel before its ClientHello".to_string(),
        }
    }
}

/// Whether the hello fits the CONNECT target: its name must be the target's or a host of
/// the same flow. `Err` carries the audit reason.
pub fn verdict(hello: &Hello, target: &Host, flow: &Flow) -> Result<(), Reason> {
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
                Err(Reason::SniMismatch)
            }
        }
        Hello::NoName => match target {
            Host::Ip(_) => Ok(()),
            Host::Name(_) if flow.allow_no_sni => Ok(()),
            Host::Name(_) => Err(Reason::NoSni),
        },
        Hello::NotTls => Err(Reason::NotTls),
        Hello::Timeout => Err(Reason::SniTimeout),
        Hello::Closed => Err(Reason::ClientGone),
    }
}
