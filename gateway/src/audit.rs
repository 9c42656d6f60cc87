//! The audit log: one JSON line per finished request or tunnel, per denial, per reload.
//! Records are numbered by the single writer (gaps are visible) and never lost: a full
//! queue makes requests wait, unless the operator chose `on_full = "drop"`.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime};

use passerelle_config::{Audit, AuditFormat, Route, Target};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;
use crate::sink::{format_line, Sink};

/// One audit record, as written (design: "Audit record").
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditEvent {
    pub seq: u64,
    pub ts: String,
    /// `request` or `reload`.
    pub event: &'static str,
    pub id: String,
    pub client: Option<String>,
    /// The client's user; Passerelle does not authenticate clients, so always null for now.
    pub user: Option<String>,
    pub method: Option<String>,
    pub scheme: Option<&'static str>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<String>,
    pub decision: Option<&'static str>,
    pub reason: Option<String>,
    /// The reason in words, as the client's error body gives it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub flow: Option<String>,
    /// `direct`, or the parent's URL.
    pub route: Option<String>,
    pub status: Option<u16>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub duration_ms: u64,
    pub sni: Option<String>,
    /// Start time in milliseconds since the Unix epoch (Squid's time field).
    #[serde(skip)]
    pub started_ms: u64,
    /// Reload records: the configuration digest before and after.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest_before: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest_after: Option<String>,
}

/// The handle requests use to emit records. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
    shared: Arc<LogShared>,
}

struct LogShared {
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
    /// Set when shutdown's grace is over: what is cut then is cut by the shutdown.
    shutting_down: AtomicBool,
    /// Connection-level refusals, per reason: a flood must not fill the disk.
    throttle: Mutex<std::collections::HashMap<String, Bucket>>,
}

/// Connection-level refusals (before any request is read) are written at most this many per
/// second per reason, after a burst; the next record written says how many it stands for.
const REFUSALS_PER_SECOND: f64 = 20.0;
const REFUSALS_BURST: f64 = 100.0;

struct Bucket {
    tokens: f64,
    last: Instant,
    folded: u64,
}

enum Msg {
    Event(Box<AuditEvent>, Option<OwnedSemaphorePermit>),
    /// Reopen a file sink (SIGUSR1, after logrotate).
    Reopen,
    /// Everything sent before this is written and flushed, then the writer stops.
    Close,
}

/// Owns the writer thread; [`AuditWriter::finish`] waits until every record is on disk.
pub struct AuditWriter {
    tx: mpsc::Sender<Msg>,
    thread: Option<JoinHandle<()>>,
}

impl AuditLog {
    /// Opens the sink and starts the writer thread (file I/O stays off the async runtime).
    pub fn open(settings: &Audit) -> std::io::Result<(AuditLog, AuditWriter)> {
        let sink = Sink::open(&settings.sink)?;
        let format = settings.format;
        let (tx, rx) = mpsc::channel::<Msg>();
        let shared = Arc::new(LogShared {
            run: rand::random(),
            next_id: AtomicU64::new(1),
            room: Arc::new(Semaphore::new(settings.queue.min(Semaphore::MAX_PERMITS))),
            drop_when_full: settings.drop_when_full,
            dropped: AtomicU64::new(0),
            gap: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            metrics: Arc::default(),
            shutting_down: AtomicBool::new(false),
            throttle: Mutex::default(),
        });
        let writer_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || write_all(rx, sink, format, &writer_shared))?;
        let writer = AuditWriter {
            tx: tx.clone(),
            thread: Some(thread),
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
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        Recorder(Arc::new(RecorderInner {
            log: self.clone(),
            started: Instant::now(),
            recorded: permit.is_some() || !self.shared.drop_when_full,
            permit: Mutex::new(permit),
            event: Mutex::new(AuditEvent {
                ts: timestamp(SystemTime::now()),
                started_ms: epoch_ms(SystemTime::now()),
                event: "request",
                id: format!("{:08x}-{id}", self.shared.run),
                client: Some(client.to_string()),
                method: Some(method.to_string()),
                ..AuditEvent::default()
            }),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
        }))
    }

    /// A record outside any request (reloads, refused connections): never waits.
    pub fn event(&self, event: AuditEvent) {
        self.send(
            AuditEvent {
                ts: timestamp(SystemTime::now()),
                started_ms: epoch_ms(SystemTime::now()),
                ..event
            },
            None,
        );
    }

    /// A refusal before any request was read (a connection limit, a client outside the
    /// allow list): audited, but at most [`REFUSALS_PER_SECOND`] per reason after a burst.
    /// Those folded are counted, and the next record written says how many it stands for.
    pub fn refusal(&self, mut event: AuditEvent) {
        let key = event.reason.clone().unwrap_or_default();
        let folded = {
            let mut buckets = self
                .shared
                .throttle
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if buckets.len() > 256 {
                buckets.retain(|_, b| b.folded > 0 || b.last.elapsed().as_secs() < 60);
            }
            let now = Instant::now();
            let bucket = buckets.entry(key).or_insert(Bucket {
                tokens: REFUSALS_BURST,
                last: now,
                folded: 0,
            });
            let refill = now.duration_since(bucket.last).as_secs_f64() * REFUSALS_PER_SECOND;
            bucket.tokens = (bucket.tokens + refill).min(REFUSALS_BURST);
            bucket.last = now;
            if bucket.tokens < 1.0 {
                bucket.folded += 1;
                self.shared.metrics.refusal_folded();
                return;
            }
            bucket.tokens -= 1.0;
            std::mem::take(&mut bucket.folded)
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

    /// A reload record (accepted or refused), naming who asked for it.
    pub fn reload(
        &self,
        accepted: bool,
        reason: Option<String>,
        before: &str,
        after: Option<&str>,
        by: &str,
    ) {
        self.event(AuditEvent {
            event: "reload",
            client: Some(by.to_string()),
            decision: Some(if accepted { "allow" } else { "deny" }),
            reason,
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
    fn cut_reason(&self) -> &'static str {
        if self.shared.shutting_down.load(Ordering::Acquire) {
            "shutdown"
        } else {
            "aborted"
        }
    }

    /// The metrics derived from the records.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// Asks the writer to reopen a file sink (after logrotate moved it away).
    pub fn reopen(&self) {
        let _ = self.tx.send(Msg::Reopen);
    }

    /// Records dropped because the queue was full (`on_full = "drop"`).
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Records waiting for the writer.
    pub fn queued(&self) -> u64 {
        self.shared.queued.load(Ordering::Relaxed)
    }

    fn send(&self, event: AuditEvent, permit: Option<OwnedSemaphorePermit>) {
        self.shared.metrics.observe(&event);
        self.shared.queued.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(Msg::Event(Box::new(event), permit)).is_err() {
            tracing::error!("audit.writer.gone");
        }
    }
}

impl AuditWriter {
    /// Writes and flushes every record emitted so far, then stops the writer.
    pub fn finish(mut self) -> std::io::Result<()> {
        let _ = self.tx.send(Msg::Close);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(())) | None => Ok(()),
            Some(Err(_)) => Err(std::io::Error::other("the audit writer panicked")),
        }
    }
}

const BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(2);

/// The writer: takes what is queued, writes it as one batch, releases the permits only once
/// the batch is written. A failing sink (disk full) is retried, never skipped: the queue
/// fills and requests wait.
fn write_all(rx: mpsc::Receiver<Msg>, mut sink: Sink, format: AuditFormat, shared: &LogShared) {
    let mut seq = 0u64;
    let mut batch = Vec::with_capacity(64 * 1024);
    let mut permits = Vec::new();
    let mut closing = false;
    while !closing {
        let Ok(mut msg) = rx.recv() else { break };
        // Let a few more records arrive: one wake-up and one write for many records, at
        // the cost of a few milliseconds of audit latency (never of requests).
        std::thread::sleep(BATCH_WINDOW);
        loop {
            match msg {
                Msg::Event(mut event, permit) => {
                    seq += 1 + shared.gap.swap(0, Ordering::Relaxed);
                    event.seq = seq;
                    format_line(&event, format, &mut batch);
                    permits.push(permit);
                }
                Msg::Reopen => {
                    write_retrying(sink.out(), &batch);
                    batch.clear();
                    sink.reopen();
                }
                Msg::Close => closing = true,
            }
            if closing || batch.len() >= 64 * 1024 {
                break;
            }
            match rx.try_recv() {
                Ok(next) => msg = next,
                Err(_) => break,
            }
        }
        write_retrying(sink.out(), &batch);
        shared
            .queued
            .fetch_sub(permits.len() as u64, Ordering::Relaxed);
        batch.clear();
        permits.clear();
    }
}

fn write_retrying(out: &mut Box<dyn Write + Send>, mut data: &[u8]) {
    let mut failing = false;
    loop {
        let step = if data.is_empty() {
            out.flush().map(|()| true)
        } else {
            match out.write(data) {
                Ok(0) => Err(std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    "the sink takes no more bytes",
                )),
                Ok(n) => {
                    data = &data[n..];
                    Ok(false)
                }
                Err(e) => Err(e),
            }
        };
        match step {
            Ok(true) => {
                if failing {
                    tracing::warn!("audit.write.recovered");
                }
                return;
            }
            Ok(false) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                if !failing {
                    tracing::error!(error = %e, "audit.write.failed: retrying every second; requests wait once the queue is full");
                    failing = true;
                }
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
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

/// A request's record in progress, shared by the request path, the response body and the
/// tunnel task; written exactly once, when the last of them lets go.
#[derive(Clone)]
pub struct Recorder(Arc<RecorderInner>);

struct RecorderInner {
    log: AuditLog,
    started: Instant,
    /// False when the queue was full with `on_full = "drop"`.
    recorded: bool,
    permit: Mutex<Option<OwnedSemaphorePermit>>,
    event: Mutex<AuditEvent>,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

impl Recorder {
    fn update(&self, f: impl FnOnce(&mut AuditEvent)) {
        if let Ok(mut event) = self.0.event.lock() {
            f(&mut event);
        }
    }

    pub fn target(&self, target: &Target, scheme: &'static str, path: Option<&str>) {
        self.update(|e| {
            e.host = Some(target.host.to_string());
            e.port = Some(target.port);
            e.scheme = Some(scheme);
            e.path = path.map(str::to_string);
        });
    }

    pub fn allow(&self, flow: &str, route: Route) {
        self.update(|e| {
            e.decision = Some("allow");
            e.flow = Some(flow.to_string());
            e.route = Some(route.to_string());
        });
    }

    /// The route actually taken: `direct` or the parent's URL.
    pub fn route(&self, route: &str) {
        self.update(|e| e.route = Some(route.to_string()));
    }

    /// A refusal; `flow`, when given, names the flow that matched partially (else the flow
    /// already recorded stays).
    pub fn deny(&self, code: &str, detail: String, flow: Option<&str>) {
        self.update(|e| {
            e.decision = Some("deny");
            if let Some(flow) = flow {
                e.flow = Some(flow.to_string());
            }
            e.reason = Some(code.to_string());
            e.detail = Some(detail);
        });
    }

    /// Words about how the request went, without a failure.
    pub fn detail(&self, detail: &str) {
        self.update(|e| {
            e.detail.get_or_insert_with(|| detail.to_string());
        });
    }

    /// An error that ended the request (before or after the decision).
    pub fn fail(&self, code: &str, detail: String) {
        self.update(|e| {
            e.reason = Some(code.to_string());
            e.detail = Some(detail);
        });
    }

    /// An error after the decision (connect failure, parent refusal, idle timeout...).
    pub fn reason(&self, reason: impl Into<String>) {
        let reason = reason.into();
        self.update(|e| {
            e.reason.get_or_insert(reason);
        });
    }

    /// The request was cut before its end (its response body dropped, or the connection).
    pub fn cut(&self) {
        let reason = self.0.log.cut_reason();
        self.reason(reason);
    }

    pub fn status(&self, status: u16) {
        self.update(|e| e.status = Some(status));
    }

    pub fn sni(&self, sni: Option<String>) {
        self.update(|e| e.sni = sni);
    }

    pub fn add_up(&self, n: u64) {
        self.0.bytes_up.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_down(&self, n: u64) {
        self.0.bytes_down.fetch_add(n, Ordering::Relaxed);
    }
}

impl Drop for RecorderInner {
    fn drop(&mut self) {
        let mut event = match self.event.lock() {
            Ok(mut e) => std::mem::take(&mut *e),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        event.bytes_up = self.bytes_up.load(Ordering::Relaxed);
        event.bytes_down = self.bytes_down.load(Ordering::Relaxed);
        event.duration_ms = self.started.elapsed().as_millis() as u64;
        if event.decision.is_none() {
            // Ended before a decision: the client went away mid-request.
            event.decision = Some("deny");
            event
                .reason
                .get_or_insert_with(|| self.log.cut_reason().to_string());
        } else if event.status.is_none() && event.reason.is_none() {
            // Allowed, but cut before any answer.
            event.reason = Some(self.log.cut_reason().to_string());
        }
        if !self.recorded {
            self.log.shared.metrics.observe(&event);
            self.log.shared.dropped.fetch_add(1, Ordering::Relaxed);
            self.log.shared.gap.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let permit = self.permit.lock().ok().and_then(|mut p| p.take());
        self.log.send(event, permit);
    }
}
