//! The audit's line formats: JSON (our record, one object per line, chained), Squid's native
//! access.log line (for SIEM parsers that already read Squid), and the SOC schemas: Elastic
//! Common Schema and OCSF's HTTP Activity. Request-derived text is escaped in every one, so
//! that no field can split a line or forge another record or field.

use std::fmt::Write as _;

use passerelle_config::AuditFormat;
use serde_json::{json, Map, Value};

use crate::record::{AuditEvent, Decision, EventKind, SCHEMA};

/// The ECS release the mapping follows (its field list is in the tests' data).
pub const ECS_VERSION: &str = "9.4.0";
/// The OCSF release the mapping follows.
pub const OCSF_VERSION: &str = "1.8.0";

/// Appends `event` as one line in `format`. JSON is the record as it is: the writer chains it
/// without `chain`, then seals it; the other formats carry the chain value given.
pub fn line(event: &AuditEvent, format: AuditFormat, out: &mut Vec<u8>) {
    let start = out.len();
    let written = match format {
        AuditFormat::Json => serde_json::to_writer(&mut *out, event),
        AuditFormat::Ecs => serde_json::to_writer(&mut *out, &ecs(event)),
        AuditFormat::Ocsf => serde_json::to_writer(&mut *out, &ocsf(event)),
        AuditFormat::Squid => {
            let mut text = String::with_capacity(200);
            squid_line(event, &mut text);
            out.extend_from_slice(text.trim_end().as_bytes());
            return;
        }
    };
    if written.is_ok() {
        escape_line_separators(out, start);
    }
}

/// `ip:port` (or `[v6]:port`) split.
fn address(client: &str) -> (Option<&str>, Option<u16>) {
    match client.rsplit_once(':') {
        Some((ip, port)) if port.bytes().all(|b| b.is_ascii_digit()) => (
            Some(ip.trim_start_matches('[').trim_end_matches(']')),
            port.parse().ok(),
        ),
        _ => (Some(client), None),
    }
}

/// Inserts only the values that are there: absent fields stay absent, not null.
fn put(map: &mut Map<String, Value>, path: &str, value: impl Into<Value>) {
    let value = value.into();
    if value.is_null() {
        return;
    }
    let mut map = map;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            map.insert(part.to_string(), value);
            return;
        }
        map = match map
            .entry(part.to_string())
            .or_insert_with(|| Value::Object(Map::new()))
        {
            Value::Object(inner) => inner,
            _ => return,
        };
    }
}

/// The request's URL as Squid writes it: `host:port` for tunnels, `http://host[:port]/path`.
fn url_original(e: &AuditEvent) -> Option<String> {
    let host = e.host.as_deref()?;
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let port = e.port?;
    Some(match e.scheme.as_deref() {
        Some("connect") | Some("udp") => format!("{host}:{port}"),
        _ if port == 80 => format!("http://{host}{}", e.path.as_deref().unwrap_or("/")),
        _ => format!("http://{host}:{port}{}", e.path.as_deref().unwrap_or("/")),
    })
}

/// Whether the request got where it was going: refused or failed is a failure.
fn succeeded(e: &AuditEvent) -> Option<bool> {
    match (e.event, e.decision) {
        (EventKind::Account, _) => Some(false),
        (_, Some(Decision::Deny)) => Some(false),
        (_, Some(Decision::Allow)) => Some(!e.failed()),
        _ => None,
    }
}

/// Our fields that no schema has: the chain's, and what is Passerelle's own.
fn own_fields(e: &AuditEvent) -> Value {
    let mut own = Map::new();
    put(&mut own, "schema", SCHEMA);
    put(&mut own, "run", e.run.as_str());
    put(&mut own, "seq", e.seq);
    put(&mut own, "chain", e.chain.clone());
    put(&mut own, "key_epoch", e.key_epoch);
    put(&mut own, "event", event_word(e.event));
    put(&mut own, "route", e.route.clone());
    put(&mut own, "account", e.account.clone());
    put(&mut own, "forwarder", e.forwarder.clone());
    put(&mut own, "chain_from", e.chain_from.clone());
    put(&mut own, "digest_before", e.digest_before.clone());
    put(&mut own, "digest_after", e.digest_after.clone());
    Value::Object(own)
}

fn event_word(kind: EventKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Elastic Common Schema: the record in ECS fields, ours under `passerelle.*`.
pub fn ecs(e: &AuditEvent) -> Value {
    let mut m = Map::new();
    put(&mut m, "@timestamp", e.ts.as_str());
    put(&mut m, "ecs.version", ECS_VERSION);
    put(&mut m, "event.kind", "event");
    let deny = e.decision == Some(Decision::Deny);
    let (category, kind): (&[&str], &[&str]) = match e.event {
        EventKind::Request if deny => (&["network", "web"], &["denied"]),
        EventKind::Request if e.scheme.as_deref() == Some("connect") => {
            (&["network", "web"], &["allowed", "connection"])
        }
        EventKind::Request => (&["network", "web"], &["allowed", "access"]),
        EventKind::Udp => (&["network"], &["allowed", "connection"]),
        EventKind::Admin => (&["network"], &["denied"]),
        EventKind::Reload => (&["configuration"], &["change"]),
        EventKind::Start => (&["process"], &["start"]),
        EventKind::Rotate => (&["file"], &["creation"]),
        EventKind::Account => (&["authentication"], &["info"]),
        EventKind::Forward => (&["process"], &["info"]),
    };
    put(&mut m, "event.category", json!(category));
    put(&mut m, "event.type", json!(kind));
    put(&mut m, "event.action", event_word(e.event));
    put(
        &mut m,
        "event.outcome",
        match succeeded(e) {
            Some(true) => "success",
            Some(false) => "failure",
            None => "unknown",
        },
    );
    put(&mut m, "event.reason", e.reason.map(|r| r.as_str()));
    put(&mut m, "event.sequence", e.seq);
    put(
        &mut m,
        "event.id",
        (!e.id.is_empty()).then_some(e.id.as_str()),
    );
    put(&mut m, "event.start", e.ts.as_str());
    put(
        &mut m,
        "event.duration",
        e.duration_ms.saturating_mul(1_000_000),
    );
    put(&mut m, "message", e.detail.clone());
    if let Some(client) = &e.client {
        let (ip, port) = address(client);
        if ip.is_some_and(|ip| ip.parse::<std::net::IpAddr>().is_ok()) {
            put(&mut m, "source.ip", ip);
            put(&mut m, "source.port", port);
        } else {
            // Who asked for a reload: `signal:SIGHUP`.
            put(&mut m, "source.address", client.as_str());
        }
    }
    if let Some(host) = &e.host {
        put(&mut m, "destination.address", host.as_str());
        if host.parse::<std::net::IpAddr>().is_ok() {
            put(&mut m, "destination.ip", host.as_str());
        } else {
            put(&mut m, "destination.domain", host.as_str());
        }
        put(&mut m, "destination.port", e.port);
        put(&mut m, "url.domain", host.as_str());
        put(&mut m, "url.port", e.port);
        put(&mut m, "url.original", url_original(e));
    }
    if e.event == EventKind::Request || e.event == EventKind::Udp {
        put(&mut m, "source.bytes", e.bytes_up);
        put(&mut m, "destination.bytes", e.bytes_down);
    }
    if let Some(path) = &e.path {
        let (path, query) = path
            .split_once('?')
            .map_or((path.as_str(), None), |(p, q)| (p, Some(q)));
        put(&mut m, "url.path", path);
        put(&mut m, "url.query", query);
    }
    put(&mut m, "http.request.method", e.method.clone());
    put(&mut m, "http.response.status_code", e.status);
    match e.scheme.as_deref() {
        Some("udp") => put(&mut m, "network.transport", "udp"),
        Some(_) => {
            put(&mut m, "network.transport", "tcp");
            put(&mut m, "network.protocol", "http");
        }
        None => {}
    }
    put(&mut m, "rule.name", e.flow.clone());
    put(&mut m, "tls.client.server_name", e.sni.clone());
    put(&mut m, "user.name", e.user.clone().or(e.account.clone()));
    put(&mut m, "observer.product", "Passerelle");
    put(&mut m, "observer.vendor", "Passerelle");
    put(&mut m, "observer.type", "proxy");
    put(&mut m, "observer.version", env!("CARGO_PKG_VERSION"));
    m.insert("passerelle".into(), own_fields(e));
    Value::Object(m)
}

/// OCSF HTTP Activity (class 4002), with the security-control profile's disposition; what
/// OCSF has no attribute for under `unmapped.passerelle`.
pub fn ocsf(e: &AuditEvent) -> Value {
    let (activity_id, activity_name) = match (e.event, e.method.as_deref()) {
        (EventKind::Request, Some("CONNECT")) => (1, "Connect"),
        (EventKind::Request, Some("DELETE")) => (2, "Delete"),
        (EventKind::Request, Some("GET")) => (3, "Get"),
        (EventKind::Request, Some("HEAD")) => (4, "Head"),
        (EventKind::Request, Some("OPTIONS")) => (5, "Options"),
        (EventKind::Request, Some("POST")) => (6, "Post"),
        (EventKind::Request, Some("PUT")) => (7, "Put"),
        (EventKind::Request, Some("TRACE")) => (8, "Trace"),
        (EventKind::Request, Some("PATCH")) => (9, "Patch"),
        (EventKind::Request, None) => (0, "Unknown"),
        _ => (99, "Other"),
    };
    let deny = e.decision == Some(Decision::Deny);
    let mut m = Map::new();
    put(&mut m, "class_uid", 4002);
    put(&mut m, "class_name", "HTTP Activity");
    put(&mut m, "category_uid", 4);
    put(&mut m, "category_name", "Network Activity");
    put(&mut m, "activity_id", activity_id);
    put(
        &mut m,
        "activity_name",
        if activity_id == 99 {
            event_word(e.event)
        } else {
            activity_name.to_string()
        },
    );
    put(&mut m, "type_uid", 400_200 + activity_id);
    put(
        &mut m,
        "type_name",
        format!("HTTP Activity: {activity_name}"),
    );
    put(&mut m, "time", e.started_ms);
    put(&mut m, "start_time", e.started_ms);
    put(&mut m, "end_time", e.started_ms + e.duration_ms);
    put(&mut m, "duration", e.duration_ms);
    let (severity_id, severity) = if deny {
        (3, "Medium")
    } else {
        (1, "Informational")
    };
    put(&mut m, "severity_id", severity_id);
    put(&mut m, "severity", severity);
    let (status_id, status) = match succeeded(e) {
        Some(true) => (1, "Success"),
        Some(false) => (2, "Failure"),
        None => (0, "Unknown"),
    };
    put(&mut m, "status_id", status_id);
    put(&mut m, "status", status);
    put(&mut m, "status_code", e.reason.map(|r| r.as_str()));
    put(&mut m, "status_detail", e.detail.clone());
    put(&mut m, "message", e.detail.clone());
    if let Some(decision) = e.decision {
        let (action_id, action, disposition_id, disposition) = match decision {
            Decision::Allow => (1, "Allowed", 1, "Allowed"),
            Decision::Deny => (2, "Denied", 2, "Blocked"),
        };
        put(&mut m, "action_id", action_id);
        put(&mut m, "action", action);
        put(&mut m, "disposition_id", disposition_id);
        put(&mut m, "disposition", disposition);
    }
    put(&mut m, "metadata.version", OCSF_VERSION);
    put(&mut m, "metadata.product.name", "Passerelle");
    put(&mut m, "metadata.product.vendor_name", "Passerelle");
    put(
        &mut m,
        "metadata.product.version",
        env!("CARGO_PKG_VERSION"),
    );
    put(&mut m, "metadata.profiles", json!(["security_control"]));
    put(&mut m, "metadata.log_name", "audit");
    put(&mut m, "metadata.log_version", SCHEMA);
    put(
        &mut m,
        "metadata.uid",
        (!e.id.is_empty()).then_some(e.id.as_str()),
    );
    put(&mut m, "metadata.sequence", e.seq);
    put(&mut m, "metadata.original_time", e.ts.as_str());
    if let Some(client) = &e.client {
        match address(client) {
            (Some(ip), port) if ip.parse::<std::net::IpAddr>().is_ok() => {
                put(&mut m, "src_endpoint.ip", ip);
                put(&mut m, "src_endpoint.port", port);
            }
            _ => put(&mut m, "src_endpoint.name", client.as_str()),
        }
    }
    if let Some(host) = &e.host {
        if host.parse::<std::net::IpAddr>().is_ok() {
            put(&mut m, "dst_endpoint.ip", host.as_str());
        } else {
            put(&mut m, "dst_endpoint.hostname", host.as_str());
        }
        put(&mut m, "dst_endpoint.port", e.port);
        put(&mut m, "http_request.url.hostname", host.as_str());
        put(&mut m, "http_request.url.port", e.port);
        put(&mut m, "http_request.url.url_string", url_original(e));
    }
    if let Some(path) = &e.path {
        let (path, query) = path
            .split_once('?')
            .map_or((path.as_str(), None), |(p, q)| (p, Some(q)));
        put(&mut m, "http_request.url.path", path);
        put(&mut m, "http_request.url.query_string", query);
    }
    put(&mut m, "http_request.http_method", e.method.clone());
    put(&mut m, "http_response.code", e.status);
    if e.event == EventKind::Request || e.event == EventKind::Udp {
        put(&mut m, "traffic.bytes_out", e.bytes_up);
        put(&mut m, "traffic.bytes_in", e.bytes_down);
        put(&mut m, "traffic.bytes", e.bytes_up + e.bytes_down);
    }
    if let Some(flow) = &e.flow {
        put(&mut m, "firewall_rule.name", flow.as_str());
        put(&mut m, "firewall_rule.uid", flow.as_str());
    }
    put(&mut m, "tls.sni", e.sni.clone());
    put(&mut m, "unmapped.passerelle", own_fields(e));
    Value::Object(m)
}

/// JSON allows U+0085, U+2028 and U+2029 raw inside strings, and some log tools split lines
/// on them: written as `\uXXXX` escapes, the record stays one line for everyone.
fn escape_line_separators(out: &mut Vec<u8>, start: usize) {
    let tail = &out[start..];
    let has = tail
        .windows(2)
        .any(|w| w == [0xc2, 0x85] || (w[0] == 0xe2 && w[1] == 0x80));
    if !has {
        return;
    }
    let text = String::from_utf8_lossy(tail).into_owned();
    let mut escaped = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\u{85}' | '\u{2028}' | '\u{2029}' => {
                escaped.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => escaped.push(c),
        }
    }
    out.truncate(start);
    out.extend_from_slice(escaped.as_bytes());
}

/// A request-derived field for a space-separated line: every byte outside printable ASCII
/// (controls, space, and all of non-ASCII: NEL, NBSP, U+2028…) percent-encoded, as Squid
/// does for URLs, so that no field can split the line or forge another record.
fn squid_field(text: &str) -> std::borrow::Cow<'_, str> {
    if text.bytes().all(|b| (0x21..0x7f).contains(&b) && b != b'%') {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if (0x21..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Squid's native access.log format:
/// `time.ms elapsed client action/status bytes method URL user hierarchy/peer type`.
fn squid_line(e: &AuditEvent, line: &mut String) {
    let client = e
        .client
        .as_deref()
        .and_then(|c| {
            c.rsplit_once(':')
                .map(|(ip, _)| ip.trim_start_matches('[').trim_end_matches(']'))
        })
        .unwrap_or("-");
    let method = e.method.as_deref().unwrap_or(match e.event {
        EventKind::Reload => "RELOAD",
        EventKind::Start => "START",
        EventKind::Rotate => "ROTATE",
        EventKind::Forward => "FORWARD",
        _ => "NONE",
    });
    let action = match (e.event, e.decision, method) {
        (EventKind::Reload | EventKind::Start | EventKind::Rotate | EventKind::Forward, _, _) => {
            "TAG_NONE"
        }
        (_, Some(Decision::Deny), _) => "TCP_DENIED",
        (EventKind::Udp, _, _) => "UDP_MISS",
        (_, _, "CONNECT") => "TCP_TUNNEL",
        _ => "TCP_MISS",
    };
    let url = match (&e.host, e.port, method) {
        (Some(host), Some(port), "CONNECT") => format!("{host}:{port}"),
        (Some(host), Some(80), _) => format!("http://{host}{}", e.path.as_deref().unwrap_or("/")),
        (Some(host), Some(port), _) => {
            format!("http://{host}:{port}{}", e.path.as_deref().unwrap_or("/"))
        }
        _ if e.event == EventKind::Reload => format!(
            "passerelle:reload/{}",
            if e.decision == Some(Decision::Allow) {
                "accepted"
            } else {
                "refused"
            }
        ),
        _ if matches!(
            e.event,
            EventKind::Start | EventKind::Rotate | EventKind::Forward
        ) =>
        {
            "passerelle:audit".to_string()
        }
        _ => "-".to_string(),
    };
    let hierarchy = match e.route.as_deref() {
        Some("direct") => format!("HIER_DIRECT/{}", e.host.as_deref().unwrap_or("-")),
        Some(parent) if e.decision == Some(Decision::Allow) => {
            let host = parent.split("://").nth(1).unwrap_or(parent);
            format!(
                "FIRSTUP_PARENT/{}",
                host.rsplit_once(':').map_or(host, |(h, _)| h)
            )
        }
        _ => "HIER_NONE/-".to_string(),
    };
    let (secs, millis) = (e.started_ms / 1000, e.started_ms % 1000);
    let _ = writeln!(
        line,
        "{secs}.{millis:03} {:>6} {} {action}/{:03} {} {} {} - {} -",
        e.duration_ms,
        squid_field(client),
        e.status.unwrap_or(0),
        e.bytes_down,
        squid_field(method),
        squid_field(&url),
        squid_field(&hierarchy),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn squid(event: &AuditEvent) -> String {
        let mut out = Vec::new();
        line(event, AuditFormat::Squid, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn squid_lines_cannot_be_split_or_forged() {
        let event = AuditEvent {
            event: EventKind::Request,
            client: Some("10.0.0.5:4000".into()),
            method: Some("GET".into()),
            host: Some("covotem.esante-centre.fr".into()),
            port: Some(80),
            path: Some("/a\u{2028}1.2 10.6.6.6 TCP_MISS/200\u{85}x\u{a0}y %z\n".into()),
            decision: Some(Decision::Allow),
            route: Some("direct".into()),
            status: Some(200),
            ..AuditEvent::default()
        };
        let line = squid(&event);
        assert!(!line.contains('\n'), "{line:?}");
        assert!(line.is_ascii(), "{line:?}");
        assert!(
            line.contains("http://covotem.esante-centre.fr/a%E2%80%A81.2%2010.6.6.6%20TCP_MISS/200%C2%85x%C2%A0y%20%25z%0A"),
            "{line}"
        );
        assert_eq!(
            line.split(' ').filter(|f| !f.is_empty()).count(),
            10,
            "{line}"
        );
    }

    #[test]
    fn json_lines_escape_unicode_line_separators() {
        let event = AuditEvent {
            event: EventKind::Request,
            path: Some("/a\u{2028}b\u{2029}c\u{85}d".into()),
            ..AuditEvent::default()
        };
        let mut out = Vec::new();
        line(&event, AuditFormat::Json, &mut out);
        let line = String::from_utf8(out).unwrap();
        assert!(line.contains(r"/a\u2028b\u2029c\u0085d"), "{line}");
        let back: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back["path"], "/a\u{2028}b\u{2029}c\u{85}d");
    }
}
