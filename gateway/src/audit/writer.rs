//! The one audit writer: a thread that takes records as they come, numbers them (`seq`),
//! chains them (JSON), writes them in batches, and releases the requests waiting for room
//! only once their records are written. A failing sink is retried, never skipped.

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use passerelle_config::AuditFormat;
use tokio::sync::OwnedSemaphorePermit;

use super::chain::{self, Chainer, GENESIS};
use super::sink::{Batch, Severity, Sink};
use super::{epoch_ms, format, timestamp, LogShared};
use crate::record::{AuditEvent, Decision, EventKind};

pub(super) enum Msg {
    Event(Box<AuditEvent>, Option<OwnedSemaphorePermit>),
    /// Reopen a file sink (SIGUSR1, after logrotate).
    Reopen,
    /// Everything sent before this is written and flushed, then the writer stops.
    Close,
}

/// A few milliseconds for more records to arrive: one wake-up and one write for many, at the
/// cost of audit latency, never of requests.
const BATCH_WINDOW: Duration = Duration::from_millis(2);

pub(super) struct Writer {
    pub sink: Sink,
    pub format: AuditFormat,
    pub chainer: Chainer,
    /// The configuration digest, for the start record.
    pub digest: String,
}

impl Writer {
    pub(super) fn run(mut self, rx: mpsc::Receiver<Msg>, shared: &LogShared) {
        let mut seq = 0u64;
        let (mut chain, start) = self.start();
        let mut batch = Batch::default();
        let mut permits = Vec::new();
        let mut scratch = Vec::with_capacity(1024);
        // Squid's format has no chain, and its readers know only request lines.
        let chained = self.format == AuditFormat::Json;
        if chained {
            self.push(
                start,
                &mut seq,
                &mut chain,
                &mut scratch,
                &mut batch,
                shared,
            );
        }
        let mut closing = false;
        while !closing {
            let Ok(mut msg) = rx.recv() else { break };
            std::thread::sleep(BATCH_WINDOW);
            loop {
                match msg {
                    Msg::Event(event, permit) => {
                        self.push(
                            *event,
                            &mut seq,
                            &mut chain,
                            &mut scratch,
                            &mut batch,
                            shared,
                        );
                        permits.push(permit);
                    }
                    Msg::Reopen => {
                        self.write(&mut batch);
                        if let Err(e) = self.sink.reopen() {
                            tracing::error!(error = %e, "audit.reopen.failed: still writing to the old file");
                        } else if chained {
                            // The new file's first record says where the chain comes from.
                            let rotate = AuditEvent {
                                event: EventKind::Rotate,
                                chain_from: Some(chain.clone()),
                                detail: Some("a new file: the chain continues from the previous one's last value".into()),
                                ..stamped()
                            };
                            self.push(
                                rotate,
                                &mut seq,
                                &mut chain,
                                &mut scratch,
                                &mut batch,
                                shared,
                            );
                        }
                    }
                    Msg::Close => closing = true,
                }
                if closing || batch.bytes.len() >= 64 * 1024 {
                    break;
                }
                match rx.try_recv() {
                    Ok(next) => msg = next,
                    Err(_) => break,
                }
            }
            self.write(&mut batch);
            shared
                .queued
                .fetch_sub(permits.len() as u64, Ordering::Relaxed);
            permits.clear();
        }
    }

    /// The run's first record, and the chain value it continues: the last one in the file,
    /// or the start of a chain when there is none, or (said in the record) none it could read.
    fn start(&self) -> (String, AuditEvent) {
        let (from, detail) = match (self.format, self.sink.path()) {
            (AuditFormat::Squid, _) => (None, None),
            (AuditFormat::Json, Some(path)) => match chain::last_value(path) {
                Ok(Some(last)) => (Some(last), None),
                Ok(None) => (
                    Some(GENESIS.to_string()),
                    Some("a new audit file: the chain starts here".to_string()),
                ),
                Err(why) => (None, Some(format!("the chain starts afresh: {why}"))),
            },
            (AuditFormat::Json, None) => (
                None,
                Some("this sink cannot be read back: the chain starts afresh".to_string()),
            ),
        };
        let start = AuditEvent {
            event: EventKind::Start,
            chain_from: from.clone(),
            digest_after: Some(self.digest.clone()),
            detail,
            ..stamped()
        };
        (from.unwrap_or_else(|| GENESIS.to_string()), start)
    }

    /// Numbers, formats and (JSON) chains one record into the batch.
    fn push(
        &self,
        mut event: AuditEvent,
        seq: &mut u64,
        chain: &mut String,
        scratch: &mut Vec<u8>,
        batch: &mut Batch,
        shared: &LogShared,
    ) {
        *seq += 1 + shared.gap.swap(0, Ordering::Relaxed);
        event.seq = *seq;
        let severity = if event.decision == Some(Decision::Deny) {
            Severity::Warning
        } else {
            Severity::Info
        };
        scratch.clear();
        format::line(&event, self.format, scratch);
        match self.format {
            AuditFormat::Json => {
                let mut sealed = Vec::with_capacity(scratch.len() + 80);
                *chain = self.chainer.seal(chain, scratch, &mut sealed);
                batch.push(&sealed, severity);
            }
            AuditFormat::Squid => batch.push(scratch, severity),
        }
    }

    /// Writes the batch, retrying every second while the sink fails (the queue fills and
    /// requests wait, unless `on_full = "drop"`).
    fn write(&mut self, batch: &mut Batch) {
        let mut failing = false;
        while let Err(e) = self.sink.write(batch) {
            if !failing {
                tracing::error!(error = %e, "audit.write.failed: retrying every second; requests wait once the queue is full");
                failing = true;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        if failing {
            tracing::warn!("audit.write.recovered");
        }
        batch.clear();
    }
}

/// A record stamped now, for the writer's own records.
fn stamped() -> AuditEvent {
    let now = SystemTime::now();
    AuditEvent {
        ts: timestamp(now),
        started_ms: epoch_ms(now),
        ..AuditEvent::default()
    }
}
