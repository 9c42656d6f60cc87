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
    /// Failures of allowed requests by flow, target and reason, most frequent first.
    pub failed_targets: Vec<(String, u64)>,
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
    let mut failed_targets: BTreeMap<String, u64> = BTreeMap::new();
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
        let failed = e.failed();
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
            let reason = reason.unwrap_or_else(|| "unknown".into());
            let target = match (&e.host, e.port) {
                (Some(host), Some(port)) => format!("{host}:{port}"),
                _ => "-".into(),
            };
            let flow = e.flow.as_deref().unwrap_or("-");
            *failed_targets
                .entry(format!("{flow} · {target} · {reason}"))
                .or_default() += 1;
            *failures.entry(reason).or_default() += 1;
        }
    }
    report.top_denied_targets = top(targets, 10);
    report.top_denied_clients = top(clients, 10);
    report.reasons = top(reasons, usize::MAX);
    report.failures = top(failures, usize::MAX);
    report.failed_targets = top(failed_targets, 20);
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
/// The words of the HTML report, in the page's language.
struct ReportWords {
    lang: &'static str,
    title: &'static str,
    period: &'static str,
    no_record: &'static str,
    filters: &'static str,
    no_filter: &'static str,
    client: &'static str,
    since: &'static str,
    until: &'static str,
    times: &'static str,
    records: &'static str,
    allowed: &'static str,
    refused: &'static str,
    failed: &'static str,
    auth_failures: &'static str,
    missing: &'static str,
    per_hour: &'static str,
    requests: &'static str,
    hour: &'static str,
    by_flow: &'static str,
    flow: &'static str,
    bytes_up: &'static str,
    bytes_down: &'static str,
    reasons: &'static str,
    targets: &'static str,
    clients: &'static str,
    failures: &'static str,
    failed_targets: &'static str,
    reloads: &'static str,
    accepted: &'static str,
    refused_reload: &'static str,
    by: &'static str,
    nothing: &'static str,
}

const REPORT_EN: ReportWords = ReportWords {
    lang: "en",
    title: "Passerelle — audit report",
    period: "Period",
    no_record: "no record",
    filters: "Filters",
    no_filter: "none: every record of the files",
    client: "client",
    since: "from",
    until: "until",
    times: "All times are UTC.",
    records: "records",
    allowed: "allowed",
    refused: "refused",
    failed: "failed (allowed, not through)",
    auth_failures: "parent authentication failures",
    missing: "missing (gaps in seq)",
    per_hour: "Requests per hour",
    requests: "requests",
    hour: "hour (UTC)",
    by_flow: "Allowed, by flow",
    flow: "flow",
    bytes_up: "sent",
    bytes_down: "received",
    reasons: "Refusals, by reason",
    targets: "Top refused targets",
    clients: "Top refused workstations",
    failures: "Failures of allowed requests, by reason",
    failed_targets: "Failures, by flow and target",
    reloads: "Reloads",
    accepted: "accepted",
    refused_reload: "refused",
    by: "asked by",
    nothing: "Nothing in this period.",
};

const REPORT_FR: ReportWords = ReportWords {
    lang: "fr",
    title: "Passerelle — rapport d'audit",
    period: "Période",
    no_record: "aucun enregistrement",
    filters: "Filtres",
    no_filter: "aucun : tous les enregistrements des fichiers",
    client: "poste",
    since: "à partir de",
    until: "jusqu'à",
    times: "Toutes les heures sont en UTC.",
    records: "enregistrements",
    allowed: "autorisées",
    refused: "refusées",
    failed: "en échec (autorisées, non abouties)",
    auth_failures: "échecs d'authentification au proxy",
    missing: "manquants (trous dans seq)",
    per_hour: "Demandes par heure",
    requests: "demandes",
    hour: "heure (UTC)",
    by_flow: "Autorisées, par flux",
    flow: "flux",
    bytes_up: "envoyés",
    bytes_down: "reçus",
    reasons: "Refus, par raison",
    targets: "Destinations les plus refusées",
    clients: "Postes les plus refusés",
    failures: "Échecs de demandes autorisées, par raison",
    failed_targets: "Échecs, par flux et destination",
    reloads: "Rechargements",
    accepted: "accepté",
    refused_reload: "refusé",
    by: "demandé par",
    nothing: "Rien sur cette période.",
};

/// Bytes in the unit a person reads.
pub fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < units.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

/// The HTML report: self-contained (no script, no external asset), every value escaped by the
/// template, in French or English; `filter` is stated at its top.
pub fn render_html(report: &Report, filter: &Filter, french: bool) -> String {
    use maud::{html, PreEscaped, DOCTYPE};
    let w = if french { &REPORT_FR } else { &REPORT_EN };
    let time = |t: &SystemTime| humantime::format_rfc3339_seconds(*t).to_string();
    let mut filters = Vec::new();
    if let Some(net) = &filter.client {
        filters.push(format!("{} {net}", w.client));
    }
    if let Some(t) = &filter.since {
        filters.push(format!("{} {}", w.since, time(t)));
    }
    if let Some(t) = &filter.until {
        filters.push(format!("{} {}", w.until, time(t)));
    }
    let list = |id: &str, title: &str, rows: &[(String, u64)], color: &str| {
        let most = rows.first().map_or(1, |(_, n)| *n).max(1);
        html! {
            h2 { (title) }
            @if rows.is_empty() {
                p.nothing { (w.nothing) }
            } @else {
                table id=(id) {
                    @for (what, n) in rows {
                        tr { td { (what) } td.num { (n) } td { (bar(*n, most, color)) } }
                    }
                }
            }
        }
    };
    let most = report
        .flows
        .values()
        .map(|t| t.requests)
        .max()
        .unwrap_or(1)
        .max(1);
    let page = html! {
        (DOCTYPE)
        html lang=(w.lang) {
            head {
                meta charset="utf-8";
                meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'";
                title { (w.title) }
                style { (PreEscaped(REPORT_STYLE)) }
            }
            body { main {
                h1 { (w.title) }
                @if let Some(v) = &report.verification {
                    p.verdict.(if v.intact() { "ok" } else { "bad" }) id="verdict" { (verdict_line(v)) }
                }
                p.period {
                    (w.period) ": "
                    @match (&report.first, &report.last) {
                        (Some(a), Some(b)) => { (a) " → " (b) }
                        _ => { (w.no_record) }
                    }
                    " · " (w.filters) ": "
                    @if filters.is_empty() { (w.no_filter) } @else { (filters.join(", ")) }
                    " · " (w.times)
                }
                section.totals {
                    div { b id="records" { (report.records) } (w.records) }
                    div { b id="allowed" { (report.allowed) } (w.allowed) }
                    div { b id="denied" { (report.denied) } (w.refused) }
                    div { b id="failed" { (report.failed) } (w.failed) }
                    div { b { (report.parent_auth_failures) } (w.auth_failures) }
                    div { b { (report.seq_gaps) } (w.missing) }
                }
                h2 { (w.per_hour) }
                @if report.per_hour.is_empty() {
                    p.nothing { (w.nothing) }
                } @else {
                    (hour_chart(&report.per_hour, w))
                }
                h2 { (w.by_flow) }
                @if report.flows.is_empty() {
                    p.nothing { (w.nothing) }
                } @else {
                    table id="flows" {
                        tr { th { (w.flow) } th.num { (w.requests) } th.num { (w.failed) } th.num { (w.bytes_up) } th.num { (w.bytes_down) } th {} }
                        @for (flow, t) in &report.flows {
                            tr {
                                td { (flow) } td.num { (t.requests) } td.num { (t.failed) }
                                td.num { (human_bytes(t.bytes_up)) } td.num { (human_bytes(t.bytes_down)) }
                                td { (bar(t.requests, most, "#2f6f4f")) }
                            }
                        }
                    }
                }
                (list("reasons", w.reasons, &report.reasons, "#b3261e"))
                (list("targets", w.targets, &report.top_denied_targets, "#b3261e"))
                (list("clients", w.clients, &report.top_denied_clients, "#b3261e"))
                (list("failures", w.failures, &report.failures, "#a15c00"))
                (list("failed-targets", w.failed_targets, &report.failed_targets, "#a15c00"))
                h2 { (w.reloads) }
                @if report.reloads.is_empty() {
                    p.nothing { (w.nothing) }
                } @else {
                    table id="reloads" {
                        @for r in &report.reloads {
                            tr {
                                td { (r.ts) }
                                td { (if r.accepted { w.accepted } else { w.refused_reload }) }
                                td { (w.by) " " (r.by.as_deref().unwrap_or("?")) }
                            }
                        }
                    }
                }
            } }
        }
    };
    page.into_string()
}

const REPORT_STYLE: &str = "body{font:15px/1.45 system-ui,sans-serif;background:#f4f5f7;color:#1d2433;margin:0}\
main{max-width:60rem;margin:2rem auto;padding:2rem;background:#fff;border-radius:8px}\
h2{margin-top:2rem;font-size:1.15rem}table{border-collapse:collapse;width:100%}\
td,th{text-align:left;padding:.25rem .5rem;border-bottom:1px solid #e3e5ea;overflow-wrap:anywhere}\
td.num,th.num{text-align:right}.nothing{color:#5b6170;font-style:italic}\
.totals{display:flex;gap:1rem;flex-wrap:wrap}.totals div{background:#f4f5f7;padding:.6rem 1rem;border-radius:6px}\
.totals b{display:block;font-size:1.4rem}.verdict{padding:.6rem 1rem;border-radius:6px;font-weight:600}\
.ok{background:#e3f4ea;color:#1c5e3b}.bad{background:#fbe4e2;color:#8c1d18}.period{color:#5b6170}\
.legend span{display:inline-block;width:.8rem;height:.8rem;margin:0 .3rem 0 1rem;vertical-align:middle}";

/// A horizontal bar, inline SVG.
fn bar(n: u64, most: u64, color: &str) -> maud::Markup {
    let width = (n as f64 / most as f64 * 200.0).round().max(1.0);
    maud::html! {
        svg width="200" height="12" role="img" { rect width=(width) height="12" fill=(color) {} }
    }
}

/// Allowed (green) and refused (red) per hour, as stacked columns of inline SVG, with a
/// vertical axis (requests), the hours under the columns, and a legend.
fn hour_chart(hours: &[(String, u64, u64)], w: &ReportWords) -> maud::Markup {
    let most = hours
        .iter()
        .map(|(_, a, d)| a + d)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let (col, gap, h, left, bottom) = (18.0, 6.0, 140.0, 48.0, 44.0);
    let width = left + hours.len() as f64 * (col + gap) + 10.0;
    // Every fourth hour named, at most twelve names.
    let every = hours.len().div_ceil(12).max(1);
    maud::html! {
        p.legend {
            span style="background:#2f6f4f" {} (w.allowed)
            span style="background:#b3261e" {} (w.refused)
        }
        svg id="per-hour" width=(width) height=(h + bottom) role="img" aria-label=(w.per_hour) {
            line x1=(left - 4.0) y1="0" x2=(left - 4.0) y2=(h) stroke="#5b6170" {}
            line x1=(left - 4.0) y1=(h) x2=(width) y2=(h) stroke="#5b6170" {}
            text x=(left - 8.0) y="10" font-size="11" text-anchor="end" { (most as u64) }
            text x=(left - 8.0) y=(h) font-size="11" text-anchor="end" { "0" }
            text x="2" y=(h / 2.0) font-size="11" { (w.requests) }
            @for (i, (hour, allowed, denied)) in hours.iter().enumerate() {
                @let x = left + i as f64 * (col + gap);
                @let ha = *allowed as f64 / most * h;
                @let hd = *denied as f64 / most * h;
                g {
                    title { (hour) ": " (allowed) " " (w.allowed) ", " (denied) " " (w.refused) }
                    rect x=(x) y=(h - ha) width=(col) height=(ha) fill="#2f6f4f" {}
                    rect x=(x) y=(h - ha - hd) width=(col) height=(hd) fill="#b3261e" {}
                    @if i % every == 0 {
                        text x=(x) y=(h + 14.0) font-size="10" { (hour.get(11..).unwrap_or(hour)) }
                    }
                }
            }
            text x=(left) y=(h + 34.0) font-size="11" { (w.hour) ", " (hours.first().map_or("", |h| h.0.get(..10).unwrap_or(""))) }
        }
    }
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
        let html = render_html(&all, &Filter::default(), false);
        assert!(html.contains("id=\"per-hour\"") && !html.contains("<script"));
        // The filters are stated, in the page's language.
        let filtered = render_html(&some, &one, true);
        assert!(filtered.contains("poste 10.0.0.2/32"), "{filtered}");
        assert!(
            filtered.contains("à partir de 2026-11-29T11:00:00Z"),
            "{filtered}"
        );
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(12), "12 B");
    }
}
