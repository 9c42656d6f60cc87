//! The audit log: one typed record ([`AuditEvent`]) per finished request or tunnel, per
//! refusal, per reload, with its reason from one vocabulary ([`Reason`]); numbered and chained
//! by one writer ([`writer`]), formatted ([`format`]) for the local sink ([`sink`]) and for
//! collectors ([`forward`]). Nothing is lost: a full queue makes requests wait, unless the
//! operator chose `on_full = "drop"`.

pub mod anchors;
pub mod chain;
pub mod format;
pub mod forward;
pub mod key;
mod recorder;
pub mod sink;
pub mod syslog;
mod writer;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime};

use passerelle_config::Audit;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use crate::record::{AuditEvent, Decision, EventKind, Reason};
pub use recorder::Recorder;

use crate::metrics::Metrics;
use recorder::RecorderInner;
use writer::{Msg, Writer};

/// The handle requests use to emit records. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
    shared: Arc<LogShared>,
}

pub(crate) struct LogShared {
    run: u32,
    next_id: AtomicU64,
    /// One permit per record between its request's start and its write: a full queue
    /// makes new requests wait (or, with `drop_when_full`, go unrecorded and counted).
    room: Arc<Semaphore>,
    drop_when_full: bool,
    dropped: AtomicU64,
    /// Dropped since the last write: the writer skips that many sequence numbers.
    gap: AtomicU64,
    queued: AtomicU64,
    metrics: Arc<Metrics>,
    status: Arc<crate::status::Status>,
    capacity: Arc<crate::capacity::Capacity>,
    /// Set when shutdown's grace is over: what is cut then is cut by the shutdown.
    shutting_down: AtomicBool,
    /// Connection-level refusals, per reason: a flood must not fill the disk.
    throttle: governor::DefaultKeyedRateLimiter<Reason>,
    /// Per reason, the refusals counted but not written since the last one written.
    folded: Mutex<std::collections::HashMap<Reason, u64>>,
    forwarders: Vec<Arc<forward::Forwarder>>,
}

/// Connection-level refusals (before any request is read) are written at most this many per
/// second per reason, after a burst; the next record written says how many it stands for.
const REFUSALS_PER_SECOND: std::num::NonZeroU32 = std::num::NonZeroU32::new(20).unwrap();
const REFUSALS_BURST: std::num::NonZeroU32 = std::num::NonZeroU32::new(100).unwrap();

/// Owns the writer thread and the forwarders' senders; [`AuditWriter::finish`] waits until
/// every record is on disk.
pub struct AuditWriter {
    tx: mpsc::Sender<Msg>,
    thread: Option<JoinHandle<()>>,
    senders: Option<forward::Senders>,
}

/// Why the audit could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Sink(std::io::Error),
    // The key's and the forwarders' errors say their cause themselves: not a source too, or
    // the chain would say it twice.
    #[error("audit.key_file: {0}")]
    Key(key::KeyError),
    #[error("audit.forward: {0}")]
    Forward(forward::ForwardError),
}

impl From<key::KeyError> for OpenError {
    fn from(e: key::KeyError) -> OpenError {
        OpenError::Key(e)
    }
}

impl From<forward::ForwardError> for OpenError {
    fn from(e: forward::ForwardError) -> OpenError {
        OpenError::Forward(e)
    }
}

impl AuditLog {
    /// Opens the sink and starts the writer thread (file I/O stays off the async runtime);
    /// its first record says where the chain continues from. `digest` is the configuration's.
    pub fn open(settings: &Audit, digest: &str) -> Result<(AuditLog, AuditWriter), OpenError> {
        let sink = sink::Sink::open(&settings.sink).map_err(OpenError::Sink)?;
        let key = match &settings.key_file {
            Some(path) => Some(key::Key::load(path)?),
            None => None,
        };
        let (forwarders, feeds, senders) = forward::start(&settings.forward)?;
        let run: u32 = rand::random();
        let writer = Writer {
            sink,
            format: settings.format,
            chainer: chain::Chainer::new(key),
            digest: digest.to_string(),
            run: format!("{run:08x}"),
            feeds,
            origin: syslog::Origin::local(),
        };
        let (tx, rx) = mpsc::channel::<Msg>();
        let shared = Arc::new(LogShared {
            run,
            next_id: AtomicU64::new(1),
            room: Arc::new(Semaphore::new(settings.queue.min(Semaphore::MAX_PERMITS))),
            drop_when_full: settings.on_full == passerelle_config::OnFull::Drop,
            dropped: AtomicU64::new(0),
            gap: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            metrics: Arc::default(),
            status: Arc::default(),
            capacity: Arc::default(),
            shutting_down: AtomicBool::new(false),
            throttle: governor::RateLimiter::keyed(
                governor::Quota::per_second(REFUSALS_PER_SECOND).allow_burst(REFUSALS_BURST),
            ),
            folded: Mutex::default(),
            forwarders,
        });
        let writer_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(rx, &writer_shared))
            .map_err(OpenError::Sink)?;
        let writer = AuditWriter {
            tx: tx.clone(),
            thread: Some(thread),
            senders: Some(senders),
        };
        Ok((AuditLog { tx, shared }, writer))
    }

    /// Starts the record of a request; it is written when the last handle to it drops.
    /// Waits while the queue is full (back-pressure), unless `on_full = "drop"`.
    pub async fn start(&self, client: SocketAddr, method: &str) -> Recorder {
        let permit = if self.shared.drop_when_full {
            self.shared.room.clone().try_acquire_owned().ok()
        } else {
            self.shared.room.clone().acquire_owned().await.ok()
        };
        let n = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let id = format!("{:08x}-{n}", self.shared.run);
        let now = SystemTime::now();
        Recorder(Arc::new(RecorderInner {
            log: self.clone(),
            started: Instant::now(),
            recorded: permit.is_some() || !self.shared.drop_when_full,
            permit: Mutex::new(permit),
            event: Mutex::new(AuditEvent {
                ts: timestamp(now),
                started_ms: epoch_ms(now),
                event: EventKind::Request,
                id: id.clone(),
                client: Some(client.to_string()),
                method: Some(method.to_string()),
                ..AuditEvent::default()
            }),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            live: std::sync::OnceLock::new(),
            id,
        }))
    }

    /// A record outside any request (reloads, admin refusals): never waits.
    pub fn event(&self, event: AuditEvent) {
        let now = SystemTime::now();
        self.send(
            AuditEvent {
                ts: timestamp(now),
                started_ms: epoch_ms(now),
                ..event
            },
            None,
        );
    }

    /// A refusal before any request was read (a connection limit, a client outside the
    /// allow list): counted always, written at most [`REFUSALS_PER_SECOND`] per reason after
    /// a burst; the next record written says how many it stands for.
    pub fn refusal(&self, mut event: AuditEvent) {
        let Some(reason) = event.reason else {
            return self.event(event);
        };
        let folded = {
            let mut folded = self.shared.folded.lock().unwrap_or_else(|p| p.into_inner());
            let count = folded.entry(reason).or_default();
            if self.shared.throttle.check_key(&reason).is_err() {
                *count += 1;
                self.observe(&event);
                self.shared.metrics.refusal_folded();
                return;
            }
            std::mem::take(count)
        };
        if folded > 0 {
            let detail = event.detail.take().unwrap_or_default();
            event.detail = Some(format!(
                "{detail}{}({folded} more like it since the last record, not written one by one)",
                if detail.is_empty() { "" } else { " " }
            ));
        }
        self.event(event);
    }

    /// A reload record (accepted or refused), naming who asked for it; a refusal's `detail`
    /// holds every problem.
    pub fn reload(&self, problems: Option<String>, before: &str, after: Option<&str>, by: &str) {
        let accepted = problems.is_none();
        self.event(AuditEvent {
            event: EventKind::Reload,
            client: Some(by.to_string()),
            decision: Some(if accepted {
                Decision::Allow
            } else {
                Decision::Deny
            }),
            reason: (!accepted).then_some(Reason::ConfigInvalid),
            detail: problems,
            digest_before: Some(before.to_string()),
            digest_after: after.map(str::to_string),
            ..AuditEvent::default()
        });
    }

    /// Shutdown's grace is over: requests and tunnels cut from now on are cut by it.
    pub fn shutting_down(&self) {
        self.shared.shutting_down.store(true, Ordering::Release);
    }

    /// The reason for a request cut before its end: the client went away, or shutdown.
    fn cut_reason(&self) -> Reason {
        if self.shared.shutting_down.load(Ordering::Acquire) {
            Reason::Shutdown
        } else {
            Reason::Aborted
        }
    }

    /// The metrics derived from the records.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// The status page's view of the records.
    pub fn status(&self) -> &Arc<crate::status::Status> {
        &self.shared.status
    }

    /// Live throughput and the visios in progress.
    pub fn capacity(&self) -> &Arc<crate::capacity::Capacity> {
        &self.shared.capacity
    }

    /// A tunnel (or routed UDP flow) of `flow` opened (closed) for `client`: the metrics'
    /// gauge, the page's count, the visios in progress.
    pub fn tunnel_opened(&self, flow: &passerelle_config::Flow, client: std::net::IpAddr) {
        self.shared.metrics.tunnel_opened();
        self.shared.status.tunnel_opened(&flow.id);
        if flow.tags.iter().any(|t| t == crate::capacity::VISIO_TAG) {
            self.shared.capacity.visio_opened(client);
        }
    }

    pub fn tunnel_closed(&self, flow: &passerelle_config::Flow, client: std::net::IpAddr) {
        self.shared.metrics.tunnel_closed();
        self.shared.status.tunnel_closed(&flow.id);
        if flow.tags.iter().any(|t| t == crate::capacity::VISIO_TAG) {
            self.shared.capacity.visio_closed(client);
        }
    }

    fn observe(&self, event: &AuditEvent) {
        self.shared.metrics.observe(event);
        self.shared.status.observe(event);
    }

    /// Asks the writer to reopen a file sink (after logrotate moved it away).
    pub fn reopen(&self) {
        let _ = self.tx.send(Msg::Reopen);
    }

    /// Records dropped because the queue was full (`on_full = "drop"`).
    pub fn dropped_count(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// The forwarders' standing, for the status page, the metrics and readiness.
    pub fn forwarders(&self) -> Vec<forward::ForwarderStatus> {
        self.shared.forwarders.iter().map(|f| f.status()).collect()
    }

    /// Records waiting for the writer.
    pub fn queued(&self) -> u64 {
        self.shared.queued.load(Ordering::Relaxed)
    }

    fn dropped(&self, event: &AuditEvent) {
        self.observe(event);
        self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        self.shared.gap.fetch_add(1, Ordering::Relaxed);
    }

    fn send(&self, event: AuditEvent, permit: Option<OwnedSemaphorePermit>) {
        self.observe(&event);
        self.shared.queued.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(Msg::Event(Box::new(event), permit)).is_err() {
            tracing::error!("audit.writer.gone");
        }
    }
}

impl AuditWriter {
    /// Writes and flushes every record emitted so far, then stops the writer.
    /// Then the forwarders deliver what waits for a few seconds; the rest stays in their
    /// spools for the next start.
    pub fn finish(mut self) -> std::io::Result<()> {
        let _ = self.tx.send(Msg::Close);
        let written = match self.thread.take().map(JoinHandle::join) {
            Some(Ok(())) | None => Ok(()),
            Some(Err(_)) => Err(std::io::Error::other("the audit writer panicked")),
        };
        if let Some(senders) = self.senders.take() {
            senders.finish();
        }
        written
    }
}

impl Drop for AuditWriter {
    /// Dropped without `finish` (a start that failed later): the senders stop at once.
    fn drop(&mut self) {
        if let Some(senders) = self.senders.take() {
            let _ = self.tx.send(Msg::Close);
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
            senders.finish();
        }
    }
}

/// RFC 3339, UTC, milliseconds.
fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
