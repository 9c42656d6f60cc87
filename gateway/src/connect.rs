//! Direct connections: resolve (static `connect_to` first, then DNS), refuse internal
//! addresses unless the flow allows them, connect with a timeout to the address checked.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use passerelle_config::host::is_internal;
use passerelle_config::{Flow, Host, Resolve, Target};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::record::Reason;

/// Failures reaching the next hop (the origin, or a parent proxy).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        host: String,
        source: std::io::Error,
    },
    #[error("{host} resolves to no address")]
    NoAddress { host: String },
    #[error(
        "{host} resolves to {addr}, an internal address, and flow {flow} does not allow_private"
    )]
    Internal {
        host: String,
        addr: std::net::IpAddr,
        flow: String,
    },
    #[error("connecting to {hop} {addr} timed out")]
    Timeout { hop: Hop, addr: String },
    #[error("cannot connect to {hop} {addr}: {source}")]
    Io {
        hop: Hop,
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS with {hop} {addr} failed: {source}")]
    Tls {
        hop: Hop,
        addr: String,
        source: std::io::Error,
    },
    #[error("{hop} {addr} broke the HTTP exchange: {source}")]
    Http {
        hop: Hop,
        addr: String,
        source: hyper::Error,
    },
}

/// Which side of the gateway failed, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    Origin,
    Parent,
}

impl std::fmt::Display for Hop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Hop::Origin => "origin",
            Hop::Parent => "parent proxy",
        })
    }
}

impl ConnectError {
    /// The audit's reason.
    pub fn reason(&self) -> Reason {
        match self {
            ConnectError::Resolve { .. } | ConnectError::NoAddress { .. } => Reason::DnsFailed,
            ConnectError::Internal { .. } => Reason::InternalAddress,
            ConnectError::Timeout { .. } => Reason::ConnectTimeout,
            ConnectError::Io { .. } => Reason::ConnectFailed,
            ConnectError::Tls { .. } => Reason::TlsFailed,
            ConnectError::Http { .. } => Reason::UpstreamProtocol,
        }
    }
}

/// A byte stream to the next hop: TCP, TLS to a parent, or a tunnel through a parent.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}
pub type BoxedIo = Box<dyn Io>;

/// Names whose DNS answer was not among their flow's documented IPs, warned about once.
#[derive(Default)]
pub struct UnlistedAnswers(Mutex<HashSet<String>>);

impl UnlistedAnswers {
    fn note(&self, flow: &Flow, host: &str, addrs: &[SocketAddr]) {
        if flow.ips.is_empty()
            || addrs
                .iter()
                .any(|a| flow.ips.contains(&a.ip().to_canonical()))
        {
            return;
        }
        let mut warned = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if warned.len() < 1024 && warned.insert(host.to_string()) {
            let got: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
            let documented: Vec<String> = flow.ips.iter().map(IpAddr::to_string).collect();
            tracing::warn!(
                flow.id = %flow.id, host, resolved = %got.join(", "), documented = %documented.join(", "),
                "dns.unlisted_answer: the answer is not among the flow's documented IPs (allowed: the vendor says trust names)"
            );
        }
    }
}

/// The addresses to try for a direct connection, already checked against the flow: the
/// address checked is the address connected (no second lookup, no rebinding).
pub async fn resolve(
    resolve: &Resolve,
    unlisted: &UnlistedAnswers,
    target: &Target,
    flow: &Flow,
    timeout: Duration,
) -> Result<Vec<SocketAddr>, ConnectError> {
    if let Some(addr) = resolve.lookup(&target.host, target.port) {
        // connect_to is trusted config (split DNS, tests): its address may be internal.
        return Ok(vec![addr]);
    }
    let host_text = target.host.to_string();
    let candidates = lookup(&target.host, target.port, timeout).await?;
    if let Host::Name(name) = &target.host {
        unlisted.note(flow, name, &candidates);
    }
    let mut allowed = Vec::with_capacity(candidates.len());
    let mut internal: Option<IpAddr> = None;
    for addr in candidates {
        let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
        if !flow.allow_private && is_internal(addr.ip()) {
            internal.get_or_insert(addr.ip());
        } else {
            allowed.push(addr);
        }
    }
    match (allowed.is_empty(), internal) {
        (false, _) => Ok(allowed),
        (true, Some(addr)) => Err(ConnectError::Internal {
            host: host_text,
            addr,
            flow: flow.id.clone(),
        }),
        (true, None) => Err(ConnectError::NoAddress { host: host_text }),
    }
}

/// The addresses of `host` (an IP literal is its own), within `timeout`.
pub async fn lookup(
    host: &Host,
    port: u16,
    timeout: Duration,
) -> Result<Vec<SocketAddr>, ConnectError> {
    let name = match host {
        Host::Ip(ip) => return Ok(vec![SocketAddr::new(*ip, port)]),
        Host::Name(name) => name,
    };
    let resolve_error = |source| ConnectError::Resolve {
        host: name.clone(),
        source,
    };
    match tokio::time::timeout(timeout, tokio::net::lookup_host((name.as_str(), port))).await {
        Ok(Ok(addrs)) => Ok(addrs.collect()),
        Ok(Err(source)) => Err(resolve_error(source)),
        Err(_) => Err(resolve_error(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "DNS lookup timed out",
        ))),
    }
}

/// Connects to the first address that answers within the timeout (each address gets its
/// share of it).
pub async fn connect_any(
    addrs: &[SocketAddr],
    timeout: Duration,
    hop: Hop,
) -> Result<TcpStream, ConnectError> {
    let per_address = timeout / addrs.len().max(1) as u32;
    let mut last = None;
    for addr in addrs {
        match tokio::time::timeout(per_address, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                tune(&stream);
                return Ok(stream);
            }
            Ok(Err(source)) => {
                last = Some(ConnectError::Io {
                    hop,
                    addr: addr.to_string(),
                    source,
                })
            }
            Err(_) => {
                last = Some(ConnectError::Timeout {
                    hop,
                    addr: addr.to_string(),
                })
            }
        }
    }
    Err(last.unwrap_or(ConnectError::NoAddress {
        host: "(no address)".to_string(),
    }))
}

/// No Nagle delay; TCP keepalive so that a long quiet tunnel notices a dead peer. Set on a
/// listener, the options are inherited by every connection it accepts (Linux copies them
/// into the accepted socket): four system calls once instead of per connection.
pub fn tune(socket: &impl std::os::fd::AsFd) {
    let socket = socket2::SockRef::from(socket);
    let _ = socket.set_tcp_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(20));
    let _ = socket.set_tcp_keepalive(&keepalive);
}

/// Sets the QoS mark of the packets `stream` sends: the DSCP in the upper six bits of the
/// IPv4 TOS or the IPv6 traffic class (none: 0, best effort). An IPv6 socket may carry IPv4
/// (mapped addresses): both are set.
pub fn set_dscp(stream: &TcpStream, dscp: Option<u8>) {
    let tos = u32::from(dscp.unwrap_or(0)) << 2;
    let socket = socket2::SockRef::from(stream);
    match stream.local_addr() {
        Ok(std::net::SocketAddr::V6(_)) => {
            let _ = socket.set_tclass_v6(tos);
            let _ = socket.set_tos_v4(tos);
        }
        _ => {
            let _ = socket.set_tos_v4(tos);
        }
    }
}

/// The DSCP a client connection's answers should carry: set per request by the service (the
/// request's flow), applied by the connection's socket before its next write when it changed.
#[derive(Debug, Default)]
pub struct Mark(std::sync::atomic::AtomicU8);

impl Mark {
    /// The flow's DSCP from now on (none: best effort).
    pub fn set(&self, dscp: Option<u8>) {
        self.0
            .store(dscp.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
    }

    pub fn get(&self) -> u8 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A TLS client configuration trusting the system's roots and, when given, the certificates
/// of a PEM file (a parent's private CA, a test CA).
pub fn tls_client_config(
    extra_ca: Option<&std::path::Path>,
) -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = extra_ca {
        use rustls::pki_types::pem::PemObject;
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
            roots.add(cert).map_err(|e| e.to_string())?;
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(std::sync::Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_accepted_by_a_tuned_listener_inherit_its_options() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let plain_addr = plain.local_addr().unwrap();
        tune(&listener);
        let _client = TcpStream::connect(addr).await.unwrap();
        let _other = TcpStream::connect(plain_addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let (untuned, _) = plain.accept().await.unwrap();
        let tuned = socket2::SockRef::from(&accepted);
        assert!(tuned.tcp_nodelay().unwrap());
        assert!(tuned.keepalive().unwrap());
        assert_eq!(tuned.tcp_keepalive_time().unwrap(), Duration::from_secs(60));
        assert_eq!(
            tuned.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(20)
        );
        // What the kernel gives a connection by itself, so the check above means something.
        let untuned = socket2::SockRef::from(&untuned);
        assert!(!untuned.tcp_nodelay().unwrap());
        assert!(!untuned.keepalive().unwrap());
    }
}
