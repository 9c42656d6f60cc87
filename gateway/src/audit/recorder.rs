//! A request's record in progress, shared by the request path, the response body and the
//! tunnel task; written exactly once, when the last of them lets go.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use passerelle_config::{Route, Target};
use tokio::sync::OwnedSemaphorePermit;

use super::AuditLog;
use crate::record::Reason;
use crate::record::{AuditEvent, Decision};

#[derive(Clone)]
pub struct Recorder(pub(super) Arc<RecorderInner>);

pub(super) struct RecorderInner {
    pub(super) log: AuditLog,
    pub(super) started: Instant,
    /// False when the queue was full with `on_full = "drop"`.
    pub(super) recorded: bool,
    pub(super) permit: Mutex<Option<OwnedSemaphorePermit>>,
    pub(super) event: Mutex<AuditEvent>,
    pub(super) bytes_up: AtomicU64,
    pub(super) bytes_down: AtomicU64,
    /// The flow's live counters, once allowed (the capacity view's throughput).
    pub(super) live: std::sync::OnceLock<Arc<crate::capacity::FlowBytes>>,
    pub(super) id: String,
}

impl Recorder {
    fn update(&self, f: impl FnOnce(&mut AuditEvent)) {
        if let Ok(mut event) = self.0.event.lock() {
            f(&mut event);
        }
    }

    /// The request id, as the client sees it (`X-Passerelle-Request-Id`) and the audit has it.
    pub fn id(&self) -> &str {
        &self.0.id
    }

    pub fn target(&self, target: &Target, scheme: &'static str, path: Option<&str>) {
        self.update(|e| {
            e.host = Some(target.host.to_string());
            e.port = Some(target.port);
            e.scheme = Some(scheme.to_string());
            e.path = path.map(str::to_string);
        });
    }

    pub fn allow(&self, flow: &str, route: Route) {
        if let Some(live) = self.0.log.capacity().flow(flow) {
            let _ = self.0.live.set(live);
        }
        self.update(|e| {
            e.decision = Some(Decision::Allow);
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
    pub fn deny(&self, reason: Reason, detail: String, flow: Option<&str>) {
        self.update(|e| {
            e.decision = Some(Decision::Deny);
            if let Some(flow) = flow {
                e.flow = Some(flow.to_string());
            }
            e.reason = Some(reason);
            e.detail = Some(detail);
        });
    }

    /// An error that ended the request (before or after the decision).
    pub fn fail(&self, reason: Reason, detail: String) {
        self.update(|e| {
            e.reason = Some(reason);
            e.detail = Some(detail);
        });
    }

    /// How the request ended, when nothing said it before (connect failure, idle timeout...).
    pub fn reason(&self, reason: Reason) {
        self.update(|e| {
            e.reason.get_or_insert(reason);
        });
    }

    /// Words about how the request went, without a failure.
    pub fn detail(&self, detail: &str) {
        self.update(|e| {
            e.detail.get_or_insert_with(|| detail.to_string());
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
        if let Some(live) = self.0.live.get() {
            live.up.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn add_down(&self, n: u64) {
        self.0.bytes_down.fetch_add(n, Ordering::Relaxed);
        if let Some(live) = self.0.live.get() {
            live.down.fetch_add(n, Ordering::Relaxed);
        }
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
            event.decision = Some(Decision::Deny);
            event.reason.get_or_insert_with(|| self.log.cut_reason());
        } else if event.status.is_none() && event.reason.is_none() {
            // Allowed, but cut before any answer.
            event.reason = Some(self.log.cut_reason());
        }
        if !self.recorded {
            self.log.dropped(&event);
            return;
        }
        let permit = self.permit.lock().ok().and_then(|mut p| p.take());
        self.log.send(event, permit);
    }
}
