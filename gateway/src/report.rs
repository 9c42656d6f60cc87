//! `passerelle report`: a summary of audit logs (JSON lines) for the security team: per
//! flow requests and bytes, top refused targets and clients, parent authentication failures,
//! reloads, and sequence gaps (lost records).

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub records: u64,
    pub flows: BTreeMap<String, FlowTotals>,
    pub denied: u64,
    pub top_denied_targets: Vec<(String, u64)>,
    pub top_denied_clients: Vec<(String, u64)>,
    pub reasons: BTreeMap<String, u64>,
    pub parent_auth_failures: u64,
    pub reloads: Vec<Reload>,
    /// Sequence numbers missing between records (lost or dropped records).
    pub seq_gaps: u64,
    pub unreadable_lines: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct FlowTotals {
    pub requests: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

#[derive(Debug, Serialize)]
pub struct Reload {
    pub ts: String,
    pub accepted: bool,
    pub digest_after: Option<String>,
}

/// Reads audit lines (several files one after the other; `seq` restarting at 1 is a new run).
pub fn summarize<'a>(lines: impl Iterator<Item = &'a str>) -> Report {
    let mut report = Report::default();
    let mut targets: BTreeMap<String, u64> = BTreeMap::new();
    let mut clients: BTreeMap<String, u64> = BTreeMap::new();
    let mut last_seq: Option<u64> = None;
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let Ok(r) = serde_json::from_str::<Value>(line) else {
            report.unreadable_lines += 1;
            continue;
        };
        report.records += 1;
        if let Some(seq) = r["seq"].as_u64() {
            if let Some(last) = last_seq {
                if seq > last + 1 {
                    report.seq_gaps += seq - last - 1;
                }
            }
            last_seq = Some(seq);
        }
        let text = |k: &str| r[k].as_str().map(str::to_string);
        if r["event"] == "reload" {
            report.reloads.push(Reload {
                ts: text("ts").unwrap_or_default(),
                accepted: r["decision"] == "allow",
                digest_after: text("digest_after"),
            });
            continue;
        }
        if let Some(reason) = text("reason") {
            *report.reasons.entry(reason.clone()).or_default() += 1;
            if reason == "parent_auth_failed" {
                report.parent_auth_failures += 1;
            }
        }
        if r["decision"] == "deny" {
            report.denied += 1;
            if let (Some(host), Some(port)) = (text("host"), r["port"].as_u64()) {
                *targets.entry(format!("{host}:{port}")).or_default() += 1;
            }
            if let Some(client) = text("client") {
                let ip = client
                    .rsplit_once(':')
                    .map_or(client.as_str(), |(ip, _)| ip)
                    .to_string();
                *clients.entry(ip).or_default() += 1;
            }
        } else if let Some(flow) = text("flow") {
            let totals = report.flows.entry(flow).or_default();
            totals.requests += 1;
            totals.bytes_up += r["bytes_up"].as_u64().unwrap_or(0);
            totals.bytes_down += r["bytes_down"].as_u64().unwrap_or(0);
        }
    }
    report.top_denied_targets = top(targets);
    report.top_denied_clients = top(clients);
    report
}

fn top(counts: BTreeMap<String, u64>) -> Vec<(String, u64)> {
    let mut list: Vec<(String, u64)> = counts.into_iter().collect();
    list.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    list.truncate(10);
    list
}

/// The report for a terminal.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} records, {} refused", report.records, report.denied);
    if report.seq_gaps > 0 {
        let _ = writeln!(
            out,
            "WARNING: {} records missing (gaps in seq)",
            report.seq_gaps
        );
    }
    let _ = writeln!(
        out,
        "\nAllowed, by flow:\n  {:<20} {:>10} {:>14} {:>14}",
        "FLOW", "REQUESTS", "BYTES UP", "BYTES DOWN"
    );
    for (flow, t) in &report.flows {
        let _ = writeln!(
            out,
            "  {flow:<20} {:>10} {:>14} {:>14}",
            t.requests, t.bytes_up, t.bytes_down
        );
    }
    let _ = writeln!(out, "\nTop refused targets:");
    for (target, n) in &report.top_denied_targets {
        let _ = writeln!(out, "  {n:>8}  {target}");
    }
    let _ = writeln!(out, "\nTop refused clients:");
    for (client, n) in &report.top_denied_clients {
        let _ = writeln!(out, "  {n:>8}  {client}");
    }
    let _ = writeln!(out, "\nReasons:");
    for (reason, n) in &report.reasons {
        let _ = writeln!(out, "  {n:>8}  {reason}");
    }
    let _ = writeln!(
        out,
        "\nParent authentication failures: {}",
        report.parent_auth_failures
    );
    let _ = writeln!(out, "Reloads: {}", report.reloads.len());
    for r in &report.reloads {
        let _ = writeln!(
            out,
            "  {}  {}",
            r.ts,
            if r.accepted { "accepted" } else { "refused" }
        );
    }
    out
}
