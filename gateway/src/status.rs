//! What the status page shows, kept as the audit records are emitted: per flow, allowed,
//! refused and failed counts and bytes over the last hour (per minute) and since start; the
//! last 100 refusals and the last 100 failures of allowed requests; the reloads; open tunnels
//! per flow. Bounded: 60 minutes, 100 of each, 20 reloads, flows from the configuration.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::record::{AuditEvent, Decision, EventKind, Lang, Reason};

const MINUTES: usize = 60;
const REFUSALS: usize = 100;
const RELOADS: usize = 20;
/// Flows the page follows at most (the configuration's, plus `none` for refusals).
const FLOWS: usize = 256;

#[derive(Default)]
pub struct Status {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    since_start: BTreeMap<String, Counts>,
    /// (minute since the epoch, per flow).
    minutes: VecDeque<(u64, BTreeMap<String, Counts>)>,
    refusals: VecDeque<Refusal>,
    failures: VecDeque<Failure>,
    reloads: VecDeque<ReloadEntry>,
    tunnels: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Counts {
    pub allowed: u64,
    pub refused: u64,
    /// Allowed, then failed on the way (DNS, connect, TLS, the parent, a timeout).
    pub failed: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

impl Counts {
    fn add(&mut self, e: &AuditEvent) {
        if e.decision == Some(Decision::Deny) {
            self.refused += 1;
        } else {
            self.allowed += 1;
        }
        if e.failed() {
            self.failed += 1;
        }
        self.bytes_up += e.bytes_up;
        self.bytes_down += e.bytes_down;
    }

    fn merge(&mut self, other: &Counts) {
        self.allowed += other.allowed;
        self.refused += other.refused;
        self.failed += other.failed;
        self.bytes_up += other.bytes_up;
        self.bytes_down += other.bytes_down;
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Refusal {
    pub ts: String,
    pub client: String,
    pub target: String,
    pub reason: String,
    pub id: String,
}

/// A failure of an allowed request, as the page lists it.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub ts: String,
    pub client: String,
    pub target: String,
    pub flow: String,
    /// `direct`, or the parent.
    pub route: String,
    pub reason: String,
    /// The reason in words, for the page's two languages.
    pub words_fr: &'static str,
    pub words_en: &'static str,
    pub id: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReloadEntry {
    pub ts: String,
    pub accepted: bool,
    pub by: String,
    pub digest: Option<String>,
}

/// The page's data.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub flows: Vec<FlowStatus>,
    /// The last hour, oldest first: (minute, allowed, refused) with the minute as RFC 3339.
    pub per_minute: Vec<(String, u64, u64)>,
    pub refusals: Vec<Refusal>,
    pub failures: Vec<Failure>,
    pub reloads: Vec<ReloadEntry>,
}

#[derive(Debug, Serialize)]
pub struct FlowStatus {
    pub flow: String,
    pub last_hour: Counts,
    pub since_start: Counts,
    pub tunnels: i64,
}

fn minute_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 60)
}

impl Status {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one audit record.
    pub fn observe(&self, e: &AuditEvent) {
        let mut inner = self.inner();
        match e.event {
            EventKind::Reload => {
                if inner.reloads.len() == RELOADS {
                    inner.reloads.pop_front();
                }
                inner.reloads.push_back(ReloadEntry {
                    ts: e.ts.clone(),
                    accepted: e.decision == Some(Decision::Allow),
                    by: e.client.clone().unwrap_or_default(),
                    digest: e.digest_after.clone(),
                });
                return;
            }
            EventKind::Request | EventKind::Udp | EventKind::Admin => {}
            EventKind::Start | EventKind::Rotate | EventKind::Account | EventKind::Forward => {
                return
            }
        }
        let flow = e.flow.clone().unwrap_or_else(|| "none".to_string());
        if inner.since_start.len() < FLOWS || inner.since_start.contains_key(&flow) {
            inner.since_start.entry(flow.clone()).or_default().add(e);
        }
        let now = minute_now();
        if inner.minutes.back().is_none_or(|(m, _)| *m != now) {
            inner.minutes.push_back((now, BTreeMap::new()));
        }
        while inner
            .minutes
            .front()
            .is_some_and(|(m, _)| *m + MINUTES as u64 <= now)
        {
            inner.minutes.pop_front();
        }
        if let Some((_, per_flow)) = inner.minutes.back_mut() {
            if per_flow.len() < FLOWS || per_flow.contains_key(&flow) {
                per_flow.entry(flow).or_default().add(e);
            }
        }
        if e.failed() {
            if inner.failures.len() == REFUSALS {
                inner.failures.pop_front();
            }
            let reason = e.reason.unwrap_or(Reason::Other);
            inner.failures.push_back(Failure {
                ts: e.ts.clone(),
                client: e.client.clone().unwrap_or_default(),
                target: match (&e.host, e.port) {
                    (Some(h), Some(p)) => format!("{h}:{p}"),
                    _ => "-".to_string(),
                },
                flow: e.flow.clone().unwrap_or_default(),
                route: e.route.clone().unwrap_or_default(),
                reason: reason.as_str().to_string(),
                words_fr: reason.words(Lang::Fr),
                words_en: reason.words(Lang::En),
                id: e.id.clone(),
            });
        }
        if e.decision == Some(Decision::Deny) {
            if inner.refusals.len() == REFUSALS {
                inner.refusals.pop_front();
            }
            inner.refusals.push_back(Refusal {
                ts: e.ts.clone(),
                client: e.client.clone().unwrap_or_default(),
                target: match (&e.host, e.port) {
                    (Some(h), Some(p)) => format!("{h}:{p}"),
                    _ => "-".to_string(),
                },
                reason: e.reason.map(|r| r.as_str().to_string()).unwrap_or_default(),
                id: e.id.clone(),
            });
        }
    }

    pub fn tunnel_opened(&self, flow: &str) {
        let mut inner = self.inner();
        if inner.tunnels.len() < FLOWS || inner.tunnels.contains_key(flow) {
            *inner.tunnels.entry(flow.to_string()).or_default() += 1;
        }
    }

    pub fn tunnel_closed(&self, flow: &str) {
        if let Some(n) = self.inner().tunnels.get_mut(flow) {
            *n -= 1;
        }
    }

    /// Open tunnels per flow, now.
    pub fn tunnels(&self) -> BTreeMap<String, i64> {
        self.inner().tunnels.clone()
    }

    /// The page's data; `flows` lists the configuration's flows first, in order.
    pub fn snapshot(&self, flows: &[String]) -> Snapshot {
        let inner = self.inner();
        let now = minute_now();
        let mut last_hour: BTreeMap<String, Counts> = BTreeMap::new();
        let mut per_minute = Vec::with_capacity(MINUTES);
        for m in (now + 1).saturating_sub(MINUTES as u64)..=now {
            let slot = inner.minutes.iter().find(|(at, _)| *at == m);
            let mut total = Counts::default();
            if let Some((_, per_flow)) = slot {
                for (flow, c) in per_flow {
                    last_hour.entry(flow.clone()).or_default().merge(c);
                    total.merge(c);
                }
            }
            let at = humantime::format_rfc3339_seconds(
                UNIX_EPOCH + std::time::Duration::from_secs(m * 60),
            );
            per_minute.push((at.to_string(), total.allowed, total.refused));
        }
        let mut names: Vec<String> = flows.to_vec();
        for seen in inner.since_start.keys().chain(inner.tunnels.keys()) {
            if !names.contains(seen) {
                names.push(seen.clone());
            }
        }
        let flows = names
            .into_iter()
            .map(|flow| FlowStatus {
                last_hour: last_hour.get(&flow).copied().unwrap_or_default(),
                since_start: inner.since_start.get(&flow).copied().unwrap_or_default(),
                tunnels: inner.tunnels.get(&flow).copied().unwrap_or(0),
                flow,
            })
            .collect();
        Snapshot {
            flows,
            per_minute,
            refusals: inner.refusals.iter().rev().cloned().collect(),
            failures: inner.failures.iter().rev().cloned().collect(),
            reloads: inner.reloads.iter().rev().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Reason;

    fn event(flow: Option<&str>, deny: bool) -> AuditEvent {
        AuditEvent {
            event: EventKind::Request,
            flow: flow.map(str::to_string),
            decision: Some(if deny {
                Decision::Deny
            } else {
                Decision::Allow
            }),
            reason: deny.then_some(Reason::NoFlow),
            host: Some("h".into()),
            port: Some(443),
            bytes_down: 10,
            ..AuditEvent::default()
        }
    }

    #[test]
    fn counts_refusals_and_bounds_what_it_keeps() {
        let s = Status::default();
        for i in 0..150 {
            s.observe(&event(Some("site"), false));
            s.observe(&event(None, i % 2 == 0));
        }
        s.tunnel_opened("site");
        let snap = s.snapshot(&["site".to_string(), "quiet".to_string()]);
        assert_eq!(snap.flows[0].flow, "site");
        assert_eq!(snap.flows[0].since_start.allowed, 150);
        assert_eq!(snap.flows[0].last_hour.bytes_down, 1500);
        assert_eq!(snap.flows[0].tunnels, 1);
        assert_eq!(snap.flows[1].flow, "quiet");
        assert_eq!(snap.refusals.len(), 75);
        assert_eq!(snap.per_minute.len(), MINUTES);
        assert_eq!(snap.per_minute.last().unwrap().2, 75);
        for _ in 0..200 {
            s.observe(&event(None, true));
        }
        assert_eq!(s.snapshot(&[]).refusals.len(), REFUSALS);
    }
}
