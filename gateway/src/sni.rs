//! The SNI check on CONNECT to a flow's TLS port: the ClientHello is parsed from a copy of
//! the client's first bytes (rustls' `Acceptor`, which copes with a hello split over records
//! and tiny segments); the same bytes are then relayed unchanged. ECH puts a public name in
//! SNI, so a mismatch is not always an attack; it is still not a documented flow.

use std::time::Duration;

use passerelle_config::{Flow, Host};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::record::Reason;

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

#[cfg(test)]
mod tests {
    use super::*;
    use passerelle_config::Environment;

    fn flow(hosts: &[&str], allow_no_sni: bool) -> Flow {
        Flow {
            id: "f".into(),
            description: String::new(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            ips: vec![],
            ports: vec![443],
            tls_ports: vec![443],
            http_ports: vec![],
            environment: Environment::All,
            tags: vec![],
            allow_private: false,
            parent_auth: true,
            idle_timeout: None,
            sni_check: true,
            allow_no_sni,
            udp_ports: vec![],
            dscp: None,
            source: String::new(),
            enabled: true,
        }
    }

    fn name(n: &str) -> Host {
        Host::parse(n).unwrap()
    }

    #[test]
    fn the_hello_must_name_the_target_or_a_host_of_its_flow() {
        let f = flow(&["a.example", "b.example"], false);
        let target = name("a.example");
        let hello = |n: &str| Hello::Name(n.to_string());
        assert_eq!(verdict(&hello("a.example"), &target, &f), Ok(()));
        assert_eq!(verdict(&hello("A.Example."), &target, &f), Ok(()));
        assert_eq!(verdict(&hello("b.example"), &target, &f), Ok(()));
        assert_eq!(
            verdict(&hello("evil.example"), &target, &f),
            Err(Reason::SniMismatch)
        );
        assert_eq!(
            verdict(&hello("10.0.0.1"), &target, &f),
            Err(Reason::SniMismatch),
            "an address in SNI is no name"
        );
        assert_eq!(verdict(&Hello::NoName, &target, &f), Err(Reason::NoSni));
        assert_eq!(
            verdict(&Hello::NoName, &target, &flow(&["a.example"], true)),
            Ok(())
        );
        let ip = Host::parse("164.138.243.158").unwrap();
        assert_eq!(verdict(&Hello::NoName, &ip, &f), Ok(()), "ICE to an IP");
        assert_eq!(verdict(&Hello::NotTls, &target, &f), Err(Reason::NotTls));
        assert_eq!(
            verdict(&Hello::Timeout, &target, &f),
            Err(Reason::SniTimeout)
        );
        assert_eq!(
            verdict(&Hello::Closed, &target, &f),
            Err(Reason::ClientGone)
        );
    }

    /// A real ClientHello, as rustls writes it.
    fn client_hello(server: &str) -> Vec<u8> {
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(server.to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    async fn read(bytes: Vec<u8>, segment: usize) -> (Hello, Vec<u8>) {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for chunk in bytes.chunks(segment) {
                client.write_all(chunk).await.unwrap();
                client.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let mut seen = Vec::new();
        let hello = read_client_hello(&mut server, Duration::from_secs(10), &mut seen).await;
        writer.await.unwrap();
        (hello, seen)
    }

    #[tokio::test]
    async fn the_name_is_read_from_a_hello_in_any_segmentation() {
        let bytes = client_hello("covotem.esante-centre.fr");
        for segment in [bytes.len(), 100, 7, 1] {
            let (hello, seen) = read(bytes.clone(), segment).await;
            assert_eq!(
                hello,
                Hello::Name("covotem.esante-centre.fr".into()),
                "{segment}"
            );
            assert_eq!(seen, bytes, "what was read is relayed as it came");
        }
        let (hello, _) = read(b"SSH-2.0-OpenSSH_9.2\r\n".to_vec(), 64).await;
        assert_eq!(hello, Hello::NotTls);
        let (hello, _) = read(bytes[..20].to_vec(), 64).await;
        assert_eq!(
            hello,
            Hello::Closed,
            "a hello cut short by the client's close"
        );
    }
}
