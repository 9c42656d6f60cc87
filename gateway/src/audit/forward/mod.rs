//! The audit beyond the jump host: any number of forwarders (`[[audit.forward]]`), each with
//! its format, its spool and its state. The writer hands each record to every forwarder
//! ([`Feeds`]); datagrams go at once, never waiting; streams go to a spool on disk that a
//! sender thread per forwarder delivers from, so a slow or dead collector holds back neither
//! requests nor the local record.

pub mod relp;
mod sender;
pub mod spool;
pub mod status;

pub use status::ForwarderStatus;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use passerelle_config::{AuditFormat, Forward, ForwardTls, ForwardTo};

use super::syslog::{self, Datagram, Origin};
use crate::record::{AuditEvent, EventKind};
use spool::{Pushed, Spool};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// Octet-counted syslog: delivered once written to the socket.
    Syslog,
    /// RELP: delivered once the collector acknowledged it.
    Relp,
}

/// A forwarder's state, shared by the writer, its sender and the status page.
pub struct Forwarder {
    pub name: String,
    pub format: AuditFormat,
    pub(crate) protocol: Protocol,
    spool: Option<Arc<Spool>>,
    connected: AtomicBool,
    delivered: AtomicU64,
    /// Datagrams the socket would not take (a full receiver, no route).
    lost: AtomicU64,
    last_error: Mutex<Option<(SystemTime, String)>>,
    stop: Mutex<Option<Instant>>,
    stopped: Condvar,
}

impl Forwarder {
    fn new(f: &Forward, spool: Option<Arc<Spool>>) -> Forwarder {
        Forwarder {
            name: f.name.clone(),
            format: f.format,
            protocol: match f.to {
                ForwardTo::Relp { .. } => Protocol::Relp,
                _ => Protocol::Syslog,
            },
            spool,
            connected: AtomicBool::new(false),
            delivered: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            last_error: Mutex::new(None),
            stop: Mutex::new(None),
            stopped: Condvar::new(),
        }
    }

    fn failed(&self, error: &str) {
        let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_ref().is_none_or(|(_, e)| e != error) {
            tracing::warn!(forwarder = %self.name, error, "audit.forward.failed: records wait in the spool");
        }
        *last = Some((SystemTime::now(), error.to_string()));
    }

    fn connected(&self, up: bool) {
        if self.connected.swap(up, Ordering::Relaxed) != up && up {
            tracing::info!(forwarder = %self.name, "audit.forward.connected");
        }
    }

    fn delivered(&self, n: u64) {
        self.delivered.fetch_add(n, Ordering::Relaxed);
    }

    fn stopping(&self) -> Option<Instant> {
        *self.stop.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits `d`, or less if the gateway stops; true when the sender should end.
    fn pause(&self, d: Duration) -> bool {
        let stop = self.stop.lock().unwrap_or_else(|p| p.into_inner());
        if stop.is_some() {
            return true;
        }
        let (stop, _) = self
            .stopped
            .wait_timeout(stop, d)
            .unwrap_or_else(|p| p.into_inner());
        stop.is_some()
    }

    /// The gateway stops, and either everything is delivered or its grace is over.
    fn done(&self, spool: &Spool) -> bool {
        self.stopping()
            .is_some_and(|deadline| Instant::now() > deadline || spool.standing().waiting == 0)
    }

    pub fn status(&self) -> ForwarderStatus {
        let standing = self
            .spool
            .as_ref()
            .map(|s| s.standing())
            .unwrap_or_default();
        let now_ms = super::epoch_ms(SystemTime::now());
        let last = self
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        ForwarderStatus {
            name: self.name.clone(),
            format: self.format.as_str(),
            connected: self
                .spool
                .is_some()
                .then(|| self.connected.load(Ordering::Relaxed)),
            waiting: standing.waiting,
            spool_bytes: standing.bytes,
            oldest_age_s: standing
                .oldest_ms
                .filter(|_| standing.waiting > 0)
                .map(|ms| now_ms.saturating_sub(ms) / 1000),
            delivered: self.delivered.load(Ordering::Relaxed),
            refused: standing.refused,
            dropped: standing.dropped,
            lost: self.lost.load(Ordering::Relaxed),
            last_error_age_s: last
                .as_ref()
                .and_then(|(at, _)| at.elapsed().ok())
                .map(|d| d.as_secs()),
            last_error: last.map(|(_, e)| e),
        }
    }
}

/// The writer's side: formats each record once per format and hands it to every forwarder.
pub(crate) struct Feeds {
    feeds: Vec<Feed>,
    origin: Origin,
}

struct Feed {
    forwarder: Arc<Forwarder>,
    /// Datagram forwarders: the socket, opened again after a failure.
    datagram: Option<Datagram>,
    target: Option<ForwardTo>,
    retry_at: Instant,
    /// A run of spool write failures, said once.
    failing: bool,
}

/// The senders' threads, stopped by [`Senders::finish`].
pub(crate) struct Senders {
    forwarders: Vec<Arc<Forwarder>>,
    threads: Vec<JoinHandle<()>>,
}

/// How long senders go on delivering at shutdown before leaving the rest in the spool.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("{name}: cannot open the spool {dir}: {cause}")]
    Spool {
        name: String,
        dir: String,
        cause: std::io::Error,
    },
    #[error("{name}: {why}")]
    Tls { name: String, why: String },
    #[error("{name}: cannot start its sender thread: {cause}")]
    Thread { name: String, cause: std::io::Error },
}

/// Opens every forwarder's spool and TLS settings and starts the senders.
pub(crate) fn start(
    forwards: &[Forward],
) -> Result<(Vec<Arc<Forwarder>>, Feeds, Senders), ForwardError> {
    let mut forwarders = Vec::new();
    let mut feeds = Vec::new();
    let mut threads = Vec::new();
    let mut launch = Vec::new();
    for f in forwards {
        let spool = match &f.spool {
            Some(s) => Some(Arc::new(
                Spool::open(&s.dir, s.max_bytes, s.on_full).map_err(|cause| {
                    ForwardError::Spool {
                        name: f.name.clone(),
                        dir: s.dir.display().to_string(),
                        cause,
                    }
                })?,
            )),
            None => None,
        };
        let forwarder = Arc::new(Forwarder::new(f, spool.clone()));
        let endpoint = match &f.to {
            ForwardTo::Relp { host, port, .. }
            | ForwardTo::Tls { host, port }
            | ForwardTo::Tcp { host, port } => Some(sender::Endpoint {
                host: bare(host),
                port: *port,
                tls: match &f.tls {
                    Some(tls) => Some(client_config(tls).map_err(|why| ForwardError::Tls {
                        name: f.name.clone(),
                        why,
                    })?),
                    None => None,
                },
            }),
            _ => None,
        };
        if let (Some(endpoint), Some(spool)) = (endpoint, spool) {
            launch.push((forwarder.clone(), spool, endpoint));
        }
        feeds.push(Feed {
            forwarder: forwarder.clone(),
            datagram: None,
            target: (!f.to.is_stream()).then(|| f.to.clone()),
            retry_at: Instant::now(),
            failing: false,
        });
        forwarders.push(forwarder);
    }
    for (forwarder, spool, endpoint) in launch {
        let name = forwarder.name.clone();
        let thread = std::thread::Builder::new()
            .name("audit-forward".into())
            .spawn(move || sender::run(forwarder, spool, endpoint))
            .map_err(|cause| ForwardError::Thread { name, cause })?;
        threads.push(thread);
    }
    Ok((
        forwarders.clone(),
        Feeds {
            feeds,
            origin: Origin::local(),
        },
        Senders {
            forwarders,
            threads,
        },
    ))
}

/// A host as the resolver takes it: an IPv6 address without its brackets.
fn bare(host: &passerelle_config::host::Host) -> String {
    match host {
        passerelle_config::host::Host::Ip(ip) => ip.to_string(),
        passerelle_config::host::Host::Name(name) => name.clone(),
    }
}

/// rustls toward a collector: its certificate checked against `ca_file` (only it, when
/// given: a SOC's private CA) or the system's roots, and its name; ours when asked for.
pub fn client_config(
    tls: &ForwardTls,
) -> Result<
    (
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    ),
    String,
> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
            for cert in certs {
                let cert =
                    cert.map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
                roots.add(cert).map_err(|e| e.to_string())?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match &tls.client {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| format!("cannot read cert_file {}: {e}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("bad certificate in {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("cannot read key_file {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("cert_file and key_file: {e}"))?
        }
        None => builder.with_no_client_auth(),
    };
    let name = ServerName::try_from(tls.server_name.clone())
        .map_err(|_| format!("server_name {:?} is not a name", tls.server_name))?;
    Ok((Arc::new(config), name))
}

impl Feeds {
    /// Hands a sealed record to every forwarder (`json`: its sealed line); what a full or
    /// failing spool did is said in records pushed onto `notices`, for the local record.
    pub fn offer(&mut self, event: &AuditEvent, json: &[u8], notices: &mut Vec<AuditEvent>) {
        if self.feeds.is_empty() {
            return;
        }
        let mut bodies: [Option<Vec<u8>>; 4] = Default::default();
        let mut message = Vec::with_capacity(json.len() + 200);
        for feed in &mut self.feeds {
            let slot = match feed.forwarder.format {
                AuditFormat::Json => 0,
                AuditFormat::Squid => 1,
                AuditFormat::Ecs => 2,
                AuditFormat::Ocsf => 3,
            };
            let body = bodies[slot].get_or_insert_with(|| {
                if slot == 0 {
                    return json.to_vec();
                }
                let mut out = Vec::with_capacity(512);
                super::format::line(event, feed.forwarder.format, &mut out);
                out
            });
            message.clear();
            syslog::message(&self.origin, event, body, &mut message);
            feed.offer(event, &message, notices);
        }
    }
}

impl Feed {
    fn offer(&mut self, event: &AuditEvent, message: &[u8], notices: &mut Vec<AuditEvent>) {
        let fwd = &self.forwarder;
        let Some(spool) = &fwd.spool else {
            return self.send_datagram(message);
        };
        let name = fwd.name.clone();
        let note = |detail: String| AuditEvent {
            event: EventKind::Forward,
            forwarder: Some(name.clone()),
            detail: Some(detail),
            ..AuditEvent::default()
        };
        match spool.push(super::epoch_ms(SystemTime::now()), message) {
            Pushed::Spooled => self.failing = false,
            Pushed::Room { refused } => {
                tracing::warn!(forwarder = %name, refused, "audit.forward.spool_room");
                notices.push(note(format!(
                    "the spool has room again: {refused} records were not forwarded to it meanwhile (they are in the local record)"
                )));
            }
            Pushed::Refused { first } => {
                if first {
                    tracing::error!(forwarder = %name, seq = event.seq, "audit.forward.spool_full: new records are not forwarded (on_full = refuse_new)");
                    notices.push(note(
                        "the spool is full: from this record on, new records are not forwarded to it (on_full = refuse_new; they stay in the local record) until the collector takes what waits".into(),
                    ));
                }
            }
            Pushed::DroppedOldest(n) => {
                tracing::error!(forwarder = %name, dropped = n, "audit.forward.spool_full: the oldest records waiting were dropped (on_full = drop_oldest)");
                notices.push(note(format!(
                    "the spool is full: the {n} oldest records waiting were dropped (on_full = drop_oldest; they are in the local record)"
                )));
            }
            Pushed::Failed(e) => {
                fwd.failed(&format!("cannot write the spool: {e}"));
                if !std::mem::replace(&mut self.failing, true) {
                    tracing::error!(forwarder = %name, error = %e, "audit.forward.spool_failed");
                    notices.push(note(format!(
                        "cannot write the spool ({e}): records are not forwarded to it until it can (they are in the local record)"
                    )));
                }
            }
        }
    }

    fn send_datagram(&mut self, message: &[u8]) {
        let fwd = &self.forwarder;
        if self.datagram.is_none() && Instant::now() >= self.retry_at {
            let opened = match &self.target {
                Some(ForwardTo::Udp { host, port }) => Datagram::udp(&bare(host), *port),
                Some(ForwardTo::Unix(path)) => Datagram::unix(path),
                _ => return,
            };
            match opened.and_then(Datagram::nonblocking) {
                Ok(d) => self.datagram = Some(d),
                Err(e) => {
                    fwd.failed(&format!("cannot open the socket: {e}"));
                    self.retry_at = Instant::now() + Duration::from_secs(30);
                }
            }
        }
        let Some(datagram) = &self.datagram else {
            // Not opened: the error that said why stands.
            fwd.lost.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let sent = datagram.send(message);
        match sent {
            Ok(()) => fwd.delivered(1),
            Err(e) => {
                fwd.lost.fetch_add(1, Ordering::Relaxed);
                if e.kind() != std::io::ErrorKind::WouldBlock {
                    fwd.failed(&format!("cannot send: {e}"));
                    if matches!(self.target, Some(ForwardTo::Udp { .. })) {
                        // Resolved again at the next try.
                        self.datagram = None;
                    }
                } else {
                    fwd.failed("the receiver is behind: datagrams are dropped");
                }
            }
        }
    }
}

impl Senders {
    /// Lets the senders deliver what waits for up to [`SHUTDOWN_GRACE`], then stops them;
    /// what is left stays in the spool for the next start.
    pub fn finish(self) {
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        for f in &self.forwarders {
            *f.stop.lock().unwrap_or_else(|p| p.into_inner()) = Some(deadline);
            f.stopped.notify_all();
            if let Some(spool) = &f.spool {
                spool.wake();
            }
        }
        for thread in self.threads {
            let _ = thread.join();
        }
        for f in &self.forwarders {
            let status = f.status();
            if status.waiting > 0 {
                tracing::warn!(forwarder = %f.name, waiting = status.waiting, "audit.forward.left_in_spool: sent at the next start");
            }
        }
    }
}

/// A spool's standing read from disk without touching it, for `doctor` (the gateway may be
/// writing it).
pub fn spool_on_disk(dir: &Path) -> std::io::Result<spool::Standing> {
    Spool::inspect(dir)
}

/// What `doctor` says of each forwarder: the collector reached as the gateway would reach it,
/// and what waits in its spool.
pub fn probe(f: &Forward) -> Vec<(bool, String, Option<String>)> {
    let mut out = Vec::new();
    match &f.to {
        ForwardTo::Relp { host, port, .. } | ForwardTo::Tls { host, port } | ForwardTo::Tcp { host, port } => {
            let tls = match f.tls.as_ref().map(client_config).transpose() {
                Ok(tls) => tls,
                Err(why) => {
                    out.push((false, why, Some("check ca_file, cert_file and key_file".into())));
                    return out;
                }
            };
            let endpoint = sender::Endpoint {
                host: bare(host),
                port: *port,
                tls,
            };
            let protocol = match f.to {
                ForwardTo::Relp { .. } => Protocol::Relp,
                _ => Protocol::Syslog,
            };
            match sender::probe(&endpoint, protocol) {
                Ok(proven) => out.push((true, proven, None)),
                Err(why) => {
                    let hint = if why.contains("certificate") || why.contains("TLS") {
                        "the collector's certificate must chain to ca_file and carry server_name (default: the host of to)"
                    } else if why.contains("refused") {
                        "nothing listens there: is the collector's TCP/TLS/RELP input on this port?"
                    } else {
                        "the collector must be reachable from this host (firewall, route, name)"
                    };
                    out.push((false, why, Some(hint.into())));
                }
            }
        }
        ForwardTo::Udp { host, port } => match Datagram::udp(&bare(host), *port) {
            Ok(_) => out.push((true, "datagrams can be sent (UDP is not acknowledged: a lost one is lost; prefer relp+tls)".into(), None)),
            Err(e) => out.push((false, format!("cannot send datagrams: {e}"), None)),
        },
        ForwardTo::Unix(path) => match std::os::unix::net::UnixDatagram::unbound().and_then(|s| s.connect(path)) {
            Ok(()) => out.push((true, format!("{} takes datagrams", path.display()), None)),
            Err(e) => out.push((false, format!("{}: {e}", path.display()), Some("is the local syslog daemon running?".into()))),
        },
    }
    if let Some(s) = &f.spool {
        match spool_on_disk(&s.dir) {
            Ok(standing) if standing.waiting > 0 => out.push((
                true,
                format!(
                    "{} records wait in the spool {} ({} bytes of at most {}){}",
                    standing.waiting,
                    s.dir.display(),
                    standing.bytes,
                    s.max_bytes,
                    standing
                        .oldest_ms
                        .map(|ms| format!(
                            ", the oldest from {}",
                            humantime::format_rfc3339_seconds(
                                std::time::UNIX_EPOCH + Duration::from_millis(ms)
                            )
                        ))
                        .unwrap_or_default()
                ),
                None,
            )),
            Ok(_) => out.push((
                true,
                format!("the spool {} is empty", s.dir.display()),
                None,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => out.push((
                true,
                format!("the spool {} does not exist yet", s.dir.display()),
                None,
            )),
            Err(e) => out.push((
                false,
                format!("cannot read the spool {}: {e}", s.dir.display()),
                Some("the spool directory must be readable and writable by Passerelle".into()),
            )),
        }
    }
    out
}
