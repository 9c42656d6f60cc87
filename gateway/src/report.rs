//! `passerelle report`: a summary of audit logs for the security team, as text, JSON or a
//! self-contained HTML page for the monthly review: the chain's verdict first, then per hour,
//! by flow, by reason, the top refused targets and clients, failures apart from what was
//! allowed, parents' authentication failures, reloads, and gaps in `seq`. Filters by client
//! and time range.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::IpAddr;
use std::time::SystemTime;

use ipnet::IpNet;
use serde::Serialize;

use crate::audit::chain::Verdict;
use crate::pages::escape;
use crate::record::{AuditEvent, Decision, EventKind, Reason};

/// Which records count.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub client: Option<IpNet>,
    pub since: Option<SystemTime>,
    pub until: Option<SystemTime>,
}

impl Filter {
    fn keeps(&self, e: &AuditEvent) -> bool {
        if let Some(net) = &self.client {
            let ip = e.client.as_deref().and_then(client_ip);
            if !ip.is_some_and(|ip| net.contains(&ip.to_canonical())) {
                return false;
            }
        }
        let at = humantime::parse_rfc3339_weak(&e.ts).ok();
        if let (Some(since), Some(at)) = (self.since, at) {
            if at < since {
                return false;
            }
        }
        if let (Some(until), Some(at)) = (self.until, at) {
            if at >= until {
                return false;
            }
        }
        true
    }
}

/// `2026-11-29`, `2026-11-29 14:00`, `2026-11-29T14:00:00Z` (UTC), or a duration ago (`24h`).
pub fn parse_time(text: &str) -> Result<SystemTime, String> {
    let t = text.trim();
    if let Ok(ago) = humantime::parse_duration(t) {
        return Ok(SystemTime::now() - ago);
    }
    let normal = t.replace('T', " ");
    let normal = normal.trim_end_matches('Z');
    let full = match normal.len() {
        10 => format!("{normal} 00:00:00"),
        16 => format!("{normal}:00"),
        _ => normal.to_string(),
    };
    humantime::parse_rfc3339_weak(&full).map_err(|_| {
        format!(
            "{text:?} is not a time: write 2026-11-29, \"2026-11-29 14:00\" (UTC), or 24h (ago)"
        )
    })
}

fn client_ip(client: &str) -> Option<IpAddr> {
    let ip = client.rsplit_once(':').map_or(client, |(ip, _)| ip);
    ip.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// The chain's verdict over the files given, when checked.
    pub verification: Option<Verdict>,
    pub first: Option<String>,
    pub last: Option<String>,
    /// Requests, tunnels and refusals (not reloads or the writer's own records).
    pub records: u64,
    pub allowed: u64,
    pub denied: u64,
    /// Allowed, but the destination or the parent failed them (502, 504).
    pub failed: u64,
    pub flows: BTreeMap<String, FlowTotals>,
    pub top_denied_targets: Vec<(String, u64)>,
    pub top_denied_clients: Vec<(String, u64)>,
    /// Refusal reasons, most frequent first.
    pub reasons: Vec<(String, u64)>,
    /// Failure reasons of allowed requests, most frequent first.
    pub failures: Vec<(String, u64)>,
    pub parent_auth_failures: u64,
    pub reloads: Vec<Reload>,
    /// Per hour (UTC): allowed, refused.
    pub per_hour: Vec<(String, u64, u64)>,
    /// Sequence numbers missing between records (lost or dropped records).
    pub seq_gaps: u64,
    pub unreadable_lines: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct FlowTotals {
    pub requests: u64,
    pub failed: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

#[derive(Debug, Serialize)]
pub struct Reload {
    pub ts: String,
    pub accepted: bool,
    pub by: Option<String>,
    pub digest_after: Option<String>,
}

/// Reads audit lines (several files one after the other; a `start` record begins a new run).
pub fn summarize<'a>(lines: impl Iterator<Item = &'a str>, filter: &Filter) -> Report {
    let mut report = Report::default();
    let mut targets: BTreeMap<String, u64> = BTreeMap::new();
    let mut clients: BTreeMap<String, u64> = BTreeMap::new();
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    let mut hours: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut last_seq: Option<u64> = None;
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let Ok(e) = serde_json::from_str::<AuditEvent>(line) else {
            report.unreadable_lines += 1;
            continue;
        };
        if e.event == EventKind::Start {
            last_seq = None;
        }
        if let Some(last) = last_seq {
            report.seq_gaps += e.seq.saturating_sub(last + 1);
        }
        last_seq = Some(e.seq);
        if !filter.keeps(&e) {
            continue;
        }
        match e.event {
            EventKind::Start | EventKind::Rotate => continue,
            EventKind::Reload => {
                report.reloads.push(Reload {
                    ts: e.ts.clone(),
                    accepted: e.decision == Some(Decision::Allow),
                    by: e.client.clone(),
                    digest_after: e.digest_after.clone(),
                });
                continue;
            }
            _ => {}
        }
        report.records += 1;
        if report.first.is_none() {
            report.first = Some(e.ts.clone());
        }
        report.last = Some(e.ts.clone());
        let hour =
            e.ts.get(..13)
                .map(|h| h.replace('T', " ") + "h")
                .unwrap_or_default();
        let slot = hours.entry(hour).or_default();
        let reason = e.reason.map(|r| r.as_str().to_string());
        if matches!(
            e.reason,
            Some(Reason::ParentAuthFailed | Reason::KerberosPreauthFailed)
        ) {
            report.parent_auth_failures += 1;
        }
        if e.is_deny() {
            report.denied += 1;
            slot.1 += 1;
            if let Some(reason) = reason {
                *reasons.entry(reason).or_default() += 1;
            }
            if let (Some(host), Some(port)) = (&e.host, e.port) {
                *targets.entry(format!("{host}:{port}")).or_default() += 1;
            }
            if let Some(ip) = e.client.as_deref().and_then(client_ip) {
                *clients.entry(ip.to_string()).or_default() += 1;
            }
            continue;
        }
        report.allowed += 1;
        slot.0 += 1;
        let failed = e.status.is_some_and(|s| s == 502 || s == 504);
        let totals = report
            .flows
            .entry(e.flow.clone().unwrap_or_else(|| "none".into()))
            .or_default();
        totals.requests += 1;
        totals.bytes_up += e.bytes_up;
        totals.bytes_down += e.bytes_down;
        if failed {
            report.failed += 1;
            totals.failed += 1;
            *failures
                .entry(reason.unwrap_or_else(|| "unknown".into()))
                .or_default() += 1;
        }
    }
    report.top_denied_targets = top(targets, 10);
    report.top_denied_clients = top(clients, 10);
    report.reasons = top(reasons, usize::MAX);
    report.failures = top(failures, usize::MAX);
    report.per_hour = hours.into_iter().map(|(h, (a, d))| (h, a, d)).collect();
    report
}

fn top(counts: BTreeMap<String, u64>, n: usize) -> Vec<(String, u64)> {
    let mut list: Vec<(String, u64)> = counts.into_iter().collect();
    list.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    list.truncate(n);
    list
}

/// The chain's verdict in one line.
pub fn verdict_line(v: &Verdict) -> String {
    match (&v.problem, v.seq_gaps) {
        (None, 0) => format!(
            "audit chain intact: {} records in {} file(s){}",
            v.records,
            v.files,
            if v.starts_from.is_some() {
                " (the first file continues an earlier one, not given)"
            } else {
                ""
            }
        ),
        (None, gaps) => format!(
            "audit chain holds, but {gaps} record(s) are missing (gaps in seq: lost, or dropped with on_full = \"drop\")"
        ),
        (Some(b), _) => format!(
            "AUDIT CHAIN BROKEN at {} line {}{}: {:?}, {}",
            b.file,
            b.line,
            b.seq.map(|s| format!(" (seq {s})")).unwrap_or_default(),
            b.kind,
            b.detail
        ),
    }
}

/// The report for a terminal.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    if let Some(v) = &report.verification {
        let _ = writeln!(out, "{}\n", verdict_line(v));
    }
    let _ = writeln!(
        out,
        "{} records, {} refused, {} allowed ({} of them failed){}",
        report.records,
        report.denied,
        report.allowed,
        report.failed,
        match (&report.first, &report.last) {
            (Some(a), Some(b)) => format!(", from {a} to {b}"),
            _ => String::new(),
        }
    );
    if report.seq_gaps > 0 {
        let _ = writeln!(
            out,
            "WARNING: {} records missing (gaps in seq)",
            report.seq_gaps
        );
    }
    let _ = writeln!(
        out,
        "\nAllowed, by flow:\n  {:<20} {:>10} {:>8} {:>14} {:>14}",
        "FLOW", "REQUESTS", "FAILED", "BYTES UP", "BYTES DOWN"
    );
    for (flow, t) in &report.flows {
        let _ = writeln!(
            out,
            "  {flow:<20} {:>10} {:>8} {:>14} {:>14}",
            t.requests, t.failed, t.bytes_up, t.bytes_down
        );
    }
    for (title, list) in [
        ("Refusals, by reason", &report.reasons),
        ("Top refused targets", &report.top_denied_targets),
        ("Top refused clients", &report.top_denied_clients),
        ("Failures of allowed requests, by reason", &report.failures),
    ] {
        let _ = writeln!(out, "\n{title}:");
        for (what, n) in list {
            let _ = writeln!(out, "  {n:>8}  {what}");
        }
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
            "  {}  {}  by {}",
            r.ts,
            if r.accepted { "accepted" } else { "refused" },
            r.by.as_deref().unwrap_or("?")
        );
    }
    out
}

/// The report as one self-contained HTML page (inline SVG charts, no script, no external
/// asset), for the monthly review.
pub fn render_html(report: &Report, title: &str) -> String {
    let mut body = String::new();
    if let Some(v) = &report.verification {
        let class = if v.intact() { "ok" } else { "bad" };
        let _ = write!(
            body,
            "<p class=\"verdict {class}\" id=\"verdict\">{}</p>",
            escape(&verdict_line(v))
        );
    }
    let _ = write!(
        body,
        "<section class=\"totals\"><div><b id=\"records\">{}</b>records</div>\
         <div><b id=\"allowed\">{}</b>allowed</div><div><b id=\"denied\">{}</b>refused</div>\
         <div><b id=\"failed\">{}</b>failed</div><div><b>{}</b>parent auth. failures</div>\
         <div><b>{}</b>missing (seq)</div></section>",
        report.records,
        report.allowed,
        report.denied,
        report.failed,
        report.parent_auth_failures,
        report.seq_gaps
    );
    let _ = write!(
        body,
        "<h2>Per hour (UTC)</h2>{}",
        hour_chart(&report.per_hour)
    );
    let _ = write!(
        body,
        "<h2>Allowed, by flow</h2><table id=\"flows\"><tr><th>flow</th><th>requests</th>\
         <th>failed</th><th>bytes up</th><th>bytes down</th><th></th></tr>"
    );
    let most = report
        .flows
        .values()
        .map(|t| t.requests)
        .max()
        .unwrap_or(1)
        .max(1);
    for (flow, t) in &report.flows {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(flow),
            t.requests,
            t.failed,
            t.bytes_up,
            t.bytes_down,
            bar(t.requests, most, "#2f6f4f")
        );
    }
    body.push_str("</table>");
    for (id, title, list, color) in [
        ("reasons", "Refusals, by reason", &report.reasons, "#b3261e"),
        (
            "targets",
            "Top refused targets",
            &report.top_denied_targets,
            "#b3261e",
        ),
        (
            "clients",
            "Top refused clients",
            &report.top_denied_clients,
            "#b3261e",
        ),
        (
            "failures",
            "Failures of allowed requests",
            &report.failures,
            "#a15c00",
        ),
    ] {
        let most = list.first().map_or(1, |(_, n)| *n).max(1);
        let _ = write!(body, "<h2>{title}</h2><table id=\"{id}\">");
        for (what, n) in list {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{n}</td><td>{}</td></tr>",
                escape(what),
                bar(*n, most, color)
            );
        }
        body.push_str("</table>");
    }
    let _ = write!(body, "<h2>Reloads</h2><table id=\"reloads\">");
    for r in &report.reloads {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&r.ts),
            if r.accepted { "accepted" } else { "refused" },
            escape(r.by.as_deref().unwrap_or("?"))
        );
    }
    body.push_str("</table>");
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
         <title>{t}</title><style>{REPORT_STYLE}</style></head>\n<body><main><h1>{t}</h1>\
         <p class=\"period\">{}</p>{body}</main></body></html>\n",
        match (&report.first, &report.last) {
            (Some(a), Some(b)) => format!("{} → {}", escape(a), escape(b)),
            _ => "no record".to_string(),
        },
        t = escape(title),
    )
}

const REPORT_STYLE: &str = "body{font:15px/1.45 system-ui,sans-serif;background:#f4f5f7;color:#1d2433;margin:0}\
main{max-width:60rem;margin:2rem auto;padding:2rem;background:#fff;border-radius:8px}\
h2{margin-top:2rem;font-size:1.15rem}table{border-collapse:collapse;width:100%}\
td,th{text-align:left;padding:.25rem .5rem;border-bottom:1px solid #e3e5ea}\
.totals{display:flex;gap:1rem;flex-wrap:wrap}.totals div{background:#f4f5f7;padding:.6rem 1rem;border-radius:6px}\
.totals b{display:block;font-size:1.4rem}.verdict{padding:.6rem 1rem;border-radius:6px;font-weight:600}\
.ok{background:#e3f4ea;color:#1c5e3b}.bad{background:#fbe4e2;color:#8c1d18}.period{color:#5b6170}";

/// A horizontal bar, inline SVG.
fn bar(n: u64, most: u64, color: &str) -> String {
    let width = (n as f64 / most as f64 * 200.0).round().max(1.0);
    format!("<svg width=\"200\" height=\"12\" role=\"img\"><rect width=\"{width}\" height=\"12\" fill=\"{color}\"/></svg>")
}

/// Allowed (green) and refused (red) per hour, as stacked columns of inline SVG.
fn hour_chart(hours: &[(String, u64, u64)]) -> String {
    if hours.is_empty() {
        return "<p>no record</p>".to_string();
    }
    let most = hours
        .iter()
        .map(|(_, a, d)| a + d)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let (w, h) = (16.0, 120.0);
    let mut svg = format!(
        "<svg id=\"per-hour\" width=\"{}\" height=\"{}\" role=\"img\" aria-label=\"requests per hour\">",
        hours.len() as f64 * (w + 4.0),
        h + 2.0
    );
    for (i, (hour, allowed, denied)) in hours.iter().enumerate() {
        let x = i as f64 * (w + 4.0);
        let ha = *allowed as f64 / most * h;
        let hd = *denied as f64 / most * h;
        let _ = write!(
            svg,
            "<g><title>{}: {allowed} allowed, {denied} refused</title>\
             <rect x=\"{x}\" y=\"{}\" width=\"{w}\" height=\"{ha}\" fill=\"#2f6f4f\"/>\
             <rect x=\"{x}\" y=\"{}\" width=\"{w}\" height=\"{hd}\" fill=\"#b3261e\"/></g>",
            escape(hour),
            h - ha,
            h - ha - hd
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(
        seq: u64,
        ts: &str,
        client: &str,
        decision: Decision,
        reason: Option<Reason>,
        status: u16,
    ) -> String {
        serde_json::to_string(&AuditEvent {
            seq,
            ts: ts.into(),
            client: Some(client.into()),
            decision: Some(decision),
            reason,
            status: Some(status),
            flow: Some("site".into()),
            host: Some("evil.example".into()),
            port: Some(443),
            ..AuditEvent::default()
        })
        .unwrap()
    }

    #[test]
    fn filters_reasons_by_count_and_failures_apart() {
        let lines = [
            line(
                1,
                "2026-11-29T10:00:00.000Z",
                "10.0.0.1:1",
                Decision::Deny,
                Some(Reason::NoFlow),
                403,
            ),
            line(
                2,
                "2026-11-29T10:05:00.000Z",
                "10.0.0.1:2",
                Decision::Deny,
                Some(Reason::PortNotOpen),
                403,
            ),
            line(
                3,
                "2026-11-29T11:00:00.000Z",
                "10.0.0.2:3",
                Decision::Deny,
                Some(Reason::PortNotOpen),
                403,
            ),
            line(
                4,
                "2026-11-29T11:30:00.000Z",
                "10.0.0.2:4",
                Decision::Allow,
                Some(Reason::ParentUnreachable),
                502,
            ),
            line(
                6,
                "2026-11-29T12:00:00.000Z",
                "10.0.0.3:5",
                Decision::Allow,
                None,
                200,
            ),
        ];
        let all = summarize(lines.iter().map(String::as_str), &Filter::default());
        assert_eq!(
            (all.records, all.denied, all.allowed, all.failed),
            (5, 3, 2, 1)
        );
        assert_eq!(all.reasons[0], ("port_not_open".to_string(), 2));
        assert_eq!(all.failures, vec![("parent_unreachable".to_string(), 1)]);
        assert_eq!(all.seq_gaps, 1);
        assert_eq!(all.per_hour.len(), 3);
        let one = Filter {
            client: Some("10.0.0.2/32".parse().unwrap()),
            since: Some(parse_time("2026-11-29 11:00").unwrap()),
            until: Some(parse_time("2026-11-29T11:15:00Z").unwrap()),
        };
        let some = summarize(lines.iter().map(String::as_str), &one);
        assert_eq!((some.records, some.denied), (1, 1));
        assert!(parse_time("yesterday-ish").is_err());
        let html = render_html(&all, "Passerelle");
        assert!(html.contains("id=\"per-hour\"") && !html.contains("<script"));
    }
}
