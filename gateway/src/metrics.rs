//! Prometheus metrics, derived from the audit records as they are emitted (so the two never
//! disagree), plus a few gauges read at scrape time. Label sets are bounded: flow ids,
//! reason codes, parent URLs from the config; never client addresses or denied hosts.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::audit::AuditEvent;

#[derive(Default)]
pub struct Metrics {
    counters: Mutex<Counters>,
    pub tunnels_active: AtomicI64,
    idle_closed: AtomicU64,
    refusals_folded: AtomicU64,
}

#[derive(Default)]
struct Counters {
    /// (kind, decision, route, flow)
    requests: BTreeMap<(&'static str, &'static str, &'static str, String), u64>,
    denials: BTreeMap<String, u64>,
    /// (flow, direction)
    bytes: BTreeMap<(String, &'static str), u64>,
    reloads: BTreeMap<&'static str, u64>,
}

/// Values read when scraped.
pub struct Gauges {
    pub connections_open: usize,
    pub connections_refused_total: u64,
    pub connections_refused_per_client: u64,
    pub connections_refused_not_allowed: u64,
    pub audit_queued: u64,
    pub audit_dropped: u64,
    /// (parent url, state, handshakes by scheme: Basic, NTLM, Negotiate, auth failures)
    pub parents: Vec<(String, &'static str, [u64; 3], u64)>,
}

impl Metrics {
    /// Counts one audit record.
    pub fn observe(&self, event: &AuditEvent) {
        let mut c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        if event.event == "reload" {
            let result = if event.decision == Some("allow") {
                "accepted"
            } else {
                "refused"
            };
            *c.reloads.entry(result).or_default() += 1;
            return;
        }
        let kind = match (event.event, event.method.as_deref()) {
            ("admin", _) => "admin",
            (_, Some("CONNECT")) => "connect",
            (_, Some(_)) => "forward",
            (_, None) => "connection",
        };
        let decision = event.decision.unwrap_or("deny");
        let route = match event.route.as_deref() {
            None => "none",
            Some("direct") => "direct",
            Some(_) => "upstream",
        };
        let flow = event.flow.clone().unwrap_or_else(|| "none".to_string());
        *c.requests
            .entry((kind, decision, route, flow.clone()))
            .or_default() += 1;
        if let Some(reason) = &event.reason {
            *c.denials.entry(reason.clone()).or_default() += 1;
        }
        if event.bytes_up > 0 {
            *c.bytes.entry((flow.clone(), "up")).or_default() += event.bytes_up;
        }
        if event.bytes_down > 0 {
            *c.bytes.entry((flow, "down")).or_default() += event.bytes_down;
        }
    }

    /// A keep-alive connection closed after its requests for being idle (not a refusal).
    pub fn idle_connection_closed(&self) {
        self.idle_closed.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection-level refusal not written one by one (the audit's flood guard).
    pub fn refusal_folded(&self) {
        self.refusals_folded.fetch_add(1, Ordering::Relaxed);
    }

    pub fn tunnel_opened(&self) {
        self.tunnels_active.fetch_add(1, Ordering::Relaxed);
    }

    pub fn tunnel_closed(&self) {
        self.tunnels_active.fetch_sub(1, Ordering::Relaxed);
    }

    /// The text exposition format (version 0.0.4).
    pub fn render(&self, gauges: &Gauges) -> String {
        let c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::with_capacity(4096);
        header(
            &mut out,
            "passerelle_build_info",
            "gauge",
            "Build information.",
        );
        let _ = writeln!(
            out,
            "passerelle_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );

        header(
            &mut out,
            "passerelle_requests_total",
            "counter",
            "Finished requests and tunnels, by kind, decision, route and flow.",
        );
        for ((kind, decision, route, flow), n) in &c.requests {
            let _ = writeln!(
                out,
                "passerelle_requests_total{{kind=\"{kind}\",decision=\"{decision}\",route=\"{route}\",flow=\"{}\"}} {n}",
                escape(flow)
            );
        }
        header(
            &mut out,
            "passerelle_request_errors_total",
            "counter",
            "Refusals and failures, by audit reason.",
        );
        for (reason, n) in &c.denials {
            let _ = writeln!(
                out,
                "passerelle_request_errors_total{{reason=\"{}\"}} {n}",
                escape(reason)
            );
        }
        header(
            &mut out,
            "passerelle_transferred_bytes_total",
            "counter",
            "Body and tunnel bytes, by flow and direction (up: client to target).",
        );
        for ((flow, direction), n) in &c.bytes {
            let _ = writeln!(
                out,
                "passerelle_transferred_bytes_total{{flow=\"{}\",direction=\"{direction}\"}} {n}",
                escape(flow)
            );
        }
        header(
            &mut out,
            "passerelle_tunnels_active",
            "gauge",
            "Open CONNECT tunnels.",
        );
        let _ = writeln!(
            out,
            "passerelle_tunnels_active {}",
            self.tunnels_active.load(Ordering::Relaxed)
        );
        header(
            &mut out,
            "passerelle_client_connections",
            "gauge",
            "Open client connections.",
        );
        let _ = writeln!(
            out,
            "passerelle_client_connections {}",
            gauges.connections_open
        );
        header(
            &mut out,
            "passerelle_idle_connections_closed_total",
            "counter",
            "Keep-alive client connections closed for being idle between requests.",
        );
        let _ = writeln!(
            out,
            "passerelle_idle_connections_closed_total {}",
            self.idle_closed.load(Ordering::Relaxed)
        );
        header(
            &mut out,
            "passerelle_client_connections_refused_total",
            "counter",
            "Client connections refused by a limit.",
        );
        let _ = writeln!(
            out,
            "passerelle_client_connections_refused_total{{limit=\"total\"}} {}",
            gauges.connections_refused_total
        );
        let _ = writeln!(
            out,
            "passerelle_client_connections_refused_total{{limit=\"per_client\"}} {}",
            gauges.connections_refused_per_client
        );
        let _ = writeln!(
            out,
            "passerelle_client_connections_refused_total{{limit=\"not_allowed\"}} {}",
            gauges.connections_refused_not_allowed
        );
        header(
            &mut out,
            "passerelle_parent_up",
            "gauge",
            "Parent proxy state (1 for the current state).",
        );
        for (url, state, _, _) in &gauges.parents {
            for s in ["up", "down", "backoff"] {
                let _ = writeln!(
                    out,
                    "passerelle_parent_up{{parent=\"{}\",state=\"{s}\"}} {}",
                    escape(url),
                    u8::from(*state == s)
                );
            }
        }
        header(
            &mut out,
            "passerelle_parent_handshakes_total",
            "counter",
            "Successful authentication handshakes with a parent, by scheme.",
        );
        for (url, _, handshakes, _) in &gauges.parents {
            for (scheme, n) in ["basic", "ntlm", "negotiate"].iter().zip(handshakes) {
                let _ = writeln!(
                    out,
                    "passerelle_parent_handshakes_total{{parent=\"{}\",scheme=\"{scheme}\"}} {n}",
                    escape(url)
                );
            }
        }
        header(
            &mut out,
            "passerelle_parent_auth_failures_total",
            "counter",
            "Times a parent refused the gateway's credentials.",
        );
        for (url, _, _, failures) in &gauges.parents {
            let _ = writeln!(
                out,
                "passerelle_parent_auth_failures_total{{parent=\"{}\"}} {failures}",
                escape(url)
            );
        }
        header(
            &mut out,
            "passerelle_audit_queue_records",
            "gauge",
            "Audit records waiting for the writer.",
        );
        let _ = writeln!(
            out,
            "passerelle_audit_queue_records {}",
            gauges.audit_queued
        );
        header(
            &mut out,
            "passerelle_audit_dropped_total",
            "counter",
            "Audit records dropped (audit.on_full = \"drop\").",
        );
        let _ = writeln!(
            out,
            "passerelle_audit_dropped_total {}",
            gauges.audit_dropped
        );
        header(
            &mut out,
            "passerelle_audit_refusals_folded_total",
            "counter",
            "Connection-level refusals counted in a later record instead of one each (flood guard).",
        );
        let _ = writeln!(
            out,
            "passerelle_audit_refusals_folded_total {}",
            self.refusals_folded.load(Ordering::Relaxed)
        );
        header(
            &mut out,
            "passerelle_reloads_total",
            "counter",
            "Configuration reloads, by result.",
        );
        for result in ["accepted", "refused"] {
            let _ = writeln!(
                out,
                "passerelle_reloads_total{{result=\"{result}\"}} {}",
                c.reloads.get(result).copied().unwrap_or(0)
            );
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
