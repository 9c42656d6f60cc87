//! The audit log: one JSON line per finished request or tunnel, per denial, per reload.
//! Records are numbered by the single writer (gaps are visible) and never dropped.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime};

use passerelle_config::{AuditSink, Route, Target};
use serde::Serialize;

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
    ids: Arc<IdSource>,
}

struct IdSource {
    prefix: u32,
    next: AtomicU64,
}

enum Msg {
    Event(Box<AuditEvent>),
    /// Everything sent before this is written and flushed, then the writer stops.
    Close,
}

/// Owns the writer thread; [`AuditWriter::finish`] waits until every record is on disk.
pub struct AuditWriter {
    tx: mpsc::Sender<Msg>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl AuditLog {
    /// Opens the sink and starts the writer thread (file I/O stays off the async runtime).
    pub fn open(sink: &AuditSink) -> std::io::Result<(AuditLog, AuditWriter)> {
        let out: Box<dyn Write + Send> = match sink {
            AuditSink::Stdout => Box::new(std::io::stdout()),
            AuditSink::File(path) => {
                Box::new(OpenOptions::new().create(true).append(true).open(path)?)
            }
        };
        let (tx, rx) = mpsc::channel::<Msg>();
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || write_all(rx, out))?;
        let ids = Arc::new(IdSource {
            prefix: rand::random(),
            next: AtomicU64::new(1),
        });
        let writer = AuditWriter {
            tx: tx.clone(),
            thread: Some(thread),
        };
        Ok((AuditLog { tx, ids }, writer))
    }

    /// Starts the record of a request; it is written when the last handle to it drops.
    pub fn start(&self, client: SocketAddr, method: &str) -> Recorder {
        let id = self.ids.next.fetch_add(1, Ordering::Relaxed);
        Recorder(Arc::new(RecorderInner {
            log: self.clone(),
            started: Instant::now(),
            event: Mutex::new(AuditEvent {
                ts: timestamp(SystemTime::now()),
                event: "request",
                id: format!("{:08x}-{id}", self.ids.prefix),
                client: Some(client.to_string()),
                method: Some(method.to_string()),
                ..AuditEvent::default()
            }),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
        }))
    }

    /// A reload record (accepted or refused).
    pub fn reload(
        &self,
        accepted: bool,
        reason: Option<String>,
        before: &str,
        after: Option<&str>,
    ) {
        self.emit(AuditEvent {
            ts: timestamp(SystemTime::now()),
            event: "reload",
            decision: Some(if accepted { "allow" } else { "deny" }),
            reason,
            digest_before: Some(before.to_string()),
            digest_after: after.map(str::to_string),
            ..AuditEvent::default()
        });
    }

    fn emit(&self, event: AuditEvent) {
        if self.tx.send(Msg::Event(Box::new(event))).is_err() {
            // Only after the writer failed: it has already logged why.
            tracing::error!("audit.writer.gone");
        }
    }
}

impl AuditWriter {
    /// Writes and flushes every record emitted so far, then stops the writer.
    pub fn finish(mut self) -> std::io::Result<()> {
        let _ = self.tx.send(Msg::Close);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(std::io::Error::other("the audit writer panicked")),
            None => Ok(()),
        }
    }
}

fn write_all(rx: mpsc::Receiver<Msg>, out: Box<dyn Write + Send>) -> std::io::Result<()> {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    let mut seq = 0u64;
    let mut line = Vec::with_capacity(512);
    while let Ok(Msg::Event(mut event)) = rx.recv() {
        loop {
            seq += 1;
            event.seq = seq;
            line.clear();
            serde_json::to_writer(&mut line, &*event).map_err(std::io::Error::other)?;
            line.push(b'\n');
            if let Err(e) = out.write_all(&line) {
                tracing::error!(error = %e, "audit.write.failed");
                return Err(e);
            }
            match rx.try_recv() {
                Ok(Msg::Event(next)) => event = next,
                Ok(Msg::Close) => return out.flush(),
                Err(_) => break,
            }
        }
        out.flush()?;
    }
    out.flush()
}

/// RFC 3339, UTC, milliseconds.
fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// A request's record in progress, shared by the request path, the response body and the
/// tunnel task; written exactly once, when the last of them lets go.
#[derive(Clone)]
pub struct Recorder(Arc<RecorderInner>);

struct RecorderInner {
    log: AuditLog,
    started: Instant,
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

    pub fn deny(&self, code: &str, detail: String, flow: Option<&str>) {
        self.update(|e| {
            e.decision = Some("deny");
            e.flow = flow.map(str::to_string);
            e.reason = Some(code.to_string());
            e.detail = Some(detail);
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
            event.reason.get_or_insert_with(|| "aborted".to_string());
        }
        self.log.emit(event);
    }
}
