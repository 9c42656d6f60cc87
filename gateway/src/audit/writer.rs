//! The one audit writer: a thread that takes records as they come, numbers them (`seq`),
//! chains them (over their JSON, whatever the local format), writes them in batches, hands
//! them to the forwarders, and releases the requests waiting for room only once their
//! records are written. A failing sink is retried, never skipped. With a forward-secure key,
//! it moves the key forward each minute, idle or not.

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use passerelle_config::AuditFormat;
use tokio::sync::OwnedSemaphorePermit;

use super::chain::{self, Chainer, GENESIS};
use super::forward::Feeds;
use super::sink::{Batch, Sink};
use super::syslog::{self, Origin};
use super::{epoch_ms, format, timestamp, LogShared};
use crate::record::{AuditEvent, EventKind, SCHEMA};

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
    /// The run's id, in every record.
    pub run: String,
    pub feeds: Feeds,
    pub origin: Origin,
}

/// What the writer carries from one record to the next.
struct Place {
    seq: u64,
    chain: String,
    batch: Batch,
    json: Vec<u8>,
    sealed: Vec<u8>,
    line: Vec<u8>,
    notices: Vec<AuditEvent>,
}

impl Writer {
    pub(super) fn run(mut self, rx: mpsc::Receiver<Msg>, shared: &LogShared) {
        let (chain, start) = self.start();
        let mut place = Place {
            seq: 0,
            chain,
            batch: Batch::default(),
            json: Vec::with_capacity(1024),
            sealed: Vec::with_capacity(1024),
            line: Vec::with_capacity(1024),
            notices: Vec::new(),
        };
        let mut permits = Vec::new();
        // Squid's readers know only request lines: the writer's own records go to forwarders.
        let own_local = self.format == AuditFormat::Json;
        self.push(start, own_local, &mut place, shared);
        let mut closing = false;
        while !closing {
            let received = match self.chainer.next_step() {
                Some(at) => {
                    let wait = at
                        .duration_since(SystemTime::now())
                        .unwrap_or(Duration::ZERO);
                    match rx.recv_timeout(wait) {
                        Ok(msg) => Some(msg),
                        Err(mpsc::RecvTimeoutError::Timeout) => None,
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
                None => match rx.recv() {
                    Ok(msg) => Some(msg),
                    Err(_) => break,
                },
            };
            let Some(mut msg) = received else {
                // Idle: the key moves on all the same, so that taking the host now does not
                // give the key of the last records written.
                self.chainer.advance(SystemTime::now());
                continue;
            };
            std::thread::sleep(BATCH_WINDOW);
            loop {
                match msg {
                    Msg::Event(event, permit) => {
                        self.push(*event, true, &mut place, shared);
                        permits.push(permit);
                    }
                    Msg::Reopen => {
                        self.write(&mut place.batch);
                        if let Err(e) = self.sink.reopen() {
                            tracing::error!(error = %e, "audit.reopen.failed: still writing to the old file");
                        } else {
                            // The new file's first record says where the chain comes from.
                            let rotate = AuditEvent {
                                event: EventKind::Rotate,
                                chain_from: Some(place.chain.clone()),
                                detail: Some("a new file: the chain continues from the previous one's last value".into()),
                                ..stamped()
                            };
                            self.push(rotate, own_local, &mut place, shared);
                        }
                    }
                    Msg::Close => closing = true,
                }
                if closing || place.batch.bytes.len() >= 64 * 1024 {
                    break;
                }
                match rx.try_recv() {
                    Ok(next) => msg = next,
                    Err(_) => break,
                }
            }
            // What the forwarders had to say (a full spool) is recorded here, at once.
            let mut rounds = 0;
            while !place.notices.is_empty() && rounds < 4 {
                rounds += 1;
                for notice in std::mem::take(&mut place.notices) {
                    let now = stamped();
                    let event = AuditEvent {
                        ts: now.ts,
                        started_ms: now.started_ms,
                        ..notice
                    };
                    shared.metrics.observe(&event);
                    self.push(event, true, &mut place, shared);
                }
            }
            self.write(&mut place.batch);
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
            (AuditFormat::Json, Some(path)) => match chain::last_value(path) {
                Ok(Some(last)) => (Some(last), None),
                Ok(None) => (
                    Some(GENESIS.to_string()),
                    Some("a new audit file: the chain starts here".to_string()),
                ),
                Err(why) => (None, Some(format!("the chain starts afresh: {why}"))),
            },
            _ => (
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

    /// Numbers and chains one record; into the batch when `local`, and to the forwarders.
    fn push(&mut self, mut event: AuditEvent, local: bool, place: &mut Place, shared: &LogShared) {
        self.chainer.advance(SystemTime::now());
        place.seq += 1 + shared.gap.swap(0, Ordering::Relaxed);
        event.seq = place.seq;
        event.schema = SCHEMA.to_string();
        event.run.clone_from(&self.run);
        event.key_epoch = self.chainer.epoch();
        event.chain = None;
        place.json.clear();
        format::line(&event, AuditFormat::Json, &mut place.json);
        place.sealed.clear();
        place.chain = self
            .chainer
            .seal(&place.chain, &place.json, &mut place.sealed);
        event.chain = Some(place.chain.clone());
        if local {
            let line: &[u8] = match self.format {
                AuditFormat::Json => &place.sealed,
                other => {
                    place.line.clear();
                    format::line(&event, other, &mut place.line);
                    &place.line
                }
            };
            if self.sink.is_syslog() {
                let mut message = Vec::with_capacity(line.len() + 200);
                syslog::message(&self.origin, &event, line, &mut message);
                place.batch.push(&message);
            } else {
                place.batch.push(line);
            }
        }
        self.feeds.offer(&event, &place.sealed, &mut place.notices);
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
