//! Prometheus metrics, observed from the typed audit records as they are emitted (so the two
//! never disagree: a refusal is counted once, from its record), plus values read at scrape
//! time. Labels are bounded: flow ids, reasons, configured parents; never client addresses
//! or refused hosts.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

use crate::record::{AuditEvent, Decision, EventKind, Reason};

impl EncodeLabelValue for Reason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        self.as_str().encode(encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    kind: &'static str,
    decision: &'static str,
    route: &'static str,
    flow: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: Reason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    flow: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Default)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    errors: Family<ReasonLabels, Counter>,
    bytes: Family<BytesLabels, Counter>,
    refused_connections: Family<LimitLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    tunnels_active: Gauge,
    idle_closed: Counter,
    refusals_folded: Counter,
}

/// Values read when scraped.
pub struct Gauges {
    pub connections_open: usize,
    pub audit_queued: u64,
    pub audit_dropped: u64,
    /// (parent url, state, handshakes by scheme: Basic, NTLM, Negotiate, auth failures)
    pub parents: Vec<(String, &'static str, [u64; 3], u64)>,
    pub visios: usize,
    pub throughput: Vec<crate::capacity::Throughput>,
    pub forwarders: Vec<crate::audit::forward::status::ForwarderStatus>,
    /// Memory ticket caches held by the Kerberos initiators: one per Negotiate parent.
    pub kerberos_caches: usize,
}

impl Metrics {
    /// Counts one audit record.
    pub fn observe(&self, event: &AuditEvent) {
        match event.event {
            EventKind::Reload => {
                let result = if event.decision == Some(Decision::Allow) {
                    "accepted"
                } else {
                    "refused"
                };
                self.reloads.get_or_create(&ResultLabels { result }).inc();
                return;
            }
            EventKind::Start | EventKind::Rotate | EventKind::Account | EventKind::Forward => {
                return
            }
            _ => {}
        }
        let kind = match (event.event, event.method.as_deref()) {
            (EventKind::Admin, _) => "admin",
            (EventKind::Udp, _) => "udp",
            (_, Some("CONNECT")) => "connect",
            (_, Some(_)) => "forward",
            (_, None) => "connection",
        };
        let route = match event.route.as_deref() {
            None => "none",
            Some("direct") => "direct",
            Some(_) => "upstream",
        };
        let flow = event.flow.clone().unwrap_or_else(|| "none".to_string());
        self.requests
            .get_or_create(&RequestLabels {
                kind,
                decision: if event.is_deny() { "deny" } else { "allow" },
                route,
                flow: flow.clone(),
            })
            .inc();
        if let Some(reason) = event.reason {
            self.errors.get_or_create(&ReasonLabels { reason }).inc();
            let limit = match reason {
                Reason::TooManyConnections => Some("total"),
                Reason::ClientConnectionLimit => Some("per_client"),
                Reason::ClientNotAllowed if kind == "connection" => Some("not_allowed"),
                _ => None,
            };
            if let Some(limit) = limit {
                self.refused_connections
                    .get_or_create(&LimitLabels { limit })
                    .inc();
            }
        }
        for (direction, n) in [("up", event.bytes_up), ("down", event.bytes_down)] {
            if n > 0 {
                self.bytes
                    .get_or_create(&BytesLabels {
                        flow: flow.clone(),
                        direction,
                    })
                    .inc_by(n);
            }
        }
    }

    /// A keep-alive connection closed after its requests for being idle (not a refusal).
    pub fn idle_connection_closed(&self) {
        self.idle_closed.inc();
    }

    /// A connection-level refusal not written one by one (the audit's flood guard).
    pub fn refusal_folded(&self) {
        self.refusals_folded.inc();
    }

    pub fn tunnel_opened(&self) {
        self.tunnels_active.inc();
    }

    pub fn tunnel_closed(&self) {
        self.tunnels_active.dec();
    }

    /// The Prometheus text format (version 0.0.4).
    pub fn render(&self, gauges: Gauges) -> String {
        let mut registry = Registry::default();
        registry.register(
            "passerelle_requests",
            "Finished requests and tunnels, by kind, decision, route and flow",
            self.requests.clone(),
        );
        registry.register(
            "passerelle_request_errors",
            "Refusals and failures, by audit reason",
            self.errors.clone(),
        );
        registry.register(
            "passerelle_transferred_bytes",
            "Body and tunnel bytes, by flow and direction (up: client to target)",
            self.bytes.clone(),
        );
        registry.register(
            "passerelle_tunnels_active",
            "Open CONNECT tunnels",
            self.tunnels_active.clone(),
        );
        registry.register(
            "passerelle_client_connections_refused",
            "Client connections refused before their request, by limit",
            self.refused_connections.clone(),
        );
        registry.register(
            "passerelle_idle_connections_closed",
            "Keep-alive client connections closed for being idle between requests",
            self.idle_closed.clone(),
        );
        registry.register(
            "passerelle_audit_refusals_folded",
            "Connection-level refusals counted in a later record instead of one each (flood guard)",
            self.refusals_folded.clone(),
        );
        registry.register(
            "passerelle_reloads",
            "Configuration reloads, by result",
            self.reloads.clone(),
        );
        for result in ["accepted", "refused"] {
            let _ = self.reloads.get_or_create(&ResultLabels { result });
        }
        registry.register_collector(Box::new(AtScrape(gauges)));
        let mut out = String::with_capacity(4096);
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        out
    }
}

/// What is read when scraped, encoded as the metric types they are.
#[derive(Debug)]
struct AtScrape(Gauges);

impl std::fmt::Debug for Gauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gauges")
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ParentLabels {
    parent: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ParentStateLabels {
    parent: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ParentSchemeLabels {
    parent: String,
    scheme: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ThroughputLabels {
    flow: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ForwarderLabels {
    forwarder: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ForwarderLossLabels {
    forwarder: String,
    why: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
    commit: &'static str,
}

impl Collector for AtScrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let g = &self.0;
        let gauge = |encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64| {
            let metric = ConstGauge::new(value);
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
        };
        gauge(
            &mut encoder,
            "passerelle_client_connections",
            "Open client connections",
            g.connections_open as i64,
        )?;
        gauge(
            &mut encoder,
            "passerelle_audit_queue_records",
            "Audit records waiting for the writer",
            g.audit_queued as i64,
        )?;
        gauge(
            &mut encoder,
            "passerelle_visio_simultaneous",
            "Workstations in a visio now (an open tunnel or routed flow of a flow tagged visio)",
            g.visios as i64,
        )?;
        let mut rate = encoder.encode_descriptor(
            "passerelle_flow_throughput_bits_per_second",
            "Each flow's throughput over the last 10 seconds",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        for t in &g.throughput {
            for (direction, bps) in [("up", t.up_bps), ("down", t.down_bps)] {
                ConstGauge::new(bps as i64).encode(rate.encode_family(&ThroughputLabels {
                    flow: t.flow.clone(),
                    direction,
                })?)?;
            }
        }
        forwarders(&mut encoder, &g.forwarders)?;
        gauge(
            &mut encoder,
            "passerelle_kerberos_ticket_caches",
            "Memory ticket caches the Kerberos initiators hold (one per Negotiate parent with a keytab or a password)",
            g.kerberos_caches as i64,
        )?;
        let dropped = ConstCounter::new(g.audit_dropped);
        dropped.encode(encoder.encode_descriptor(
            "passerelle_audit_dropped",
            "Audit records dropped (audit.on_full = \"drop\")",
            None,
            dropped.metric_type(),
        )?)?;
        let info = ConstGauge::new(1i64);
        let mut family = encoder.encode_descriptor(
            "passerelle_build_info",
            "Build information",
            None,
            info.metric_type(),
        )?;
        info.encode(family.encode_family(&VersionLabels {
            version: env!("CARGO_PKG_VERSION"),
            commit: crate::COMMIT,
        })?)?;
        let mut up = encoder.encode_descriptor(
            "passerelle_parent_up",
            "Parent proxy state (1 for the current state)",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        for (url, state, _, _) in &g.parents {
            for s in ["up", "down", "backoff"] {
                ConstGauge::new(i64::from(*state == s)).encode(up.encode_family(
                    &ParentStateLabels {
                        parent: url.clone(),
                        state: s,
                    },
                )?)?;
            }
        }
        let mut handshakes = encoder.encode_descriptor(
            "passerelle_parent_handshakes",
            "Successful authentication handshakes with a parent, by scheme",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for (url, _, by_scheme, _) in &g.parents {
            for (scheme, n) in ["basic", "ntlm", "negotiate"].into_iter().zip(by_scheme) {
                ConstCounter::new(*n).encode(handshakes.encode_family(&ParentSchemeLabels {
                    parent: url.clone(),
                    scheme,
                })?)?;
            }
        }
        let mut failures = encoder.encode_descriptor(
            "passerelle_parent_auth_failures",
            "Times a parent refused the gateway's credentials",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for (url, _, _, n) in &g.parents {
            ConstCounter::new(*n).encode(failures.encode_family(&ParentLabels {
                parent: url.clone(),
            })?)?;
        }
        Ok(())
    }
}

/// Each audit forwarder's standing: what waits, since when, what went, what did not.
fn forwarders(
    encoder: &mut DescriptorEncoder,
    all: &[crate::audit::forward::status::ForwarderStatus],
) -> Result<(), std::fmt::Error> {
    let label = |f: &crate::audit::forward::status::ForwarderStatus| ForwarderLabels {
        forwarder: f.name.clone(),
    };
    for (name, help, value) in [
        (
            "passerelle_audit_forward_waiting_records",
            "Audit records in a forwarder's spool, not yet delivered",
            (|f: &crate::audit::forward::status::ForwarderStatus| f.waiting as i64)
                as fn(&crate::audit::forward::status::ForwarderStatus) -> i64,
        ),
        (
            "passerelle_audit_forward_oldest_waiting_seconds",
            "Age of the oldest record waiting in a forwarder's spool (0: none waiting)",
            |f| f.oldest_age_s.unwrap_or(0) as i64,
        ),
        (
            "passerelle_audit_forward_spool_bytes",
            "Bytes of a forwarder's spool on disk",
            |f| f.spool_bytes as i64,
        ),
        (
            "passerelle_audit_forward_connected",
            "1 when a stream forwarder has a session with its collector",
            |f| i64::from(f.connected.unwrap_or(false)),
        ),
    ] {
        let mut family =
            encoder.encode_descriptor(name, help, None, ConstGauge::new(0i64).metric_type())?;
        for f in all {
            ConstGauge::new(value(f)).encode(family.encode_family(&label(f))?)?;
        }
    }
    let mut delivered = encoder.encode_descriptor(
        "passerelle_audit_forward_delivered",
        "Audit records delivered to a collector (acknowledged by RELP, written to a syslog stream, sent as a datagram)",
        None,
        ConstCounter::new(0u64).metric_type(),
    )?;
    for f in all {
        ConstCounter::new(f.delivered).encode(delivered.encode_family(&label(f))?)?;
    }
    let mut lost = encoder.encode_descriptor(
        "passerelle_audit_forward_not_forwarded",
        "Audit records a forwarder did not deliver, by why: spool full (refused, dropped), datagram not sent",
        None,
        ConstCounter::new(0u64).metric_type(),
    )?;
    for f in all {
        for (why, n) in [
            ("spool_full_refused", f.refused),
            ("spool_full_dropped", f.dropped),
            ("datagram", f.lost),
        ] {
            ConstCounter::new(n).encode(lost.encode_family(&ForwarderLossLabels {
                forwarder: f.name.clone(),
                why,
            })?)?;
        }
    }
    Ok(())
}
