//! The audit's two line formats: JSON (one object per line; the writer chains it) and Squid's
//! native access.log line, for SIEM parsers that already read Squid. Request-derived text is
//! escaped so that no field can split a line or forge another record.

use std::fmt::Write as _;

use passerelle_config::AuditFormat;

use crate::record::{AuditEvent, Decision, EventKind};

/// Appends `event` as one line in `format` (JSON without its chain: the writer seals it).
pub fn line(event: &AuditEvent, format: AuditFormat, out: &mut Vec<u8>) {
    match format {
        AuditFormat::Json => {
            let start = out.len();
            if serde_json::to_writer(&mut *out, event).is_ok() {
                escape_line_separators(out, start);
            }
        }
        AuditFormat::Squid => {
            let mut text = String::with_capacity(200);
            squid_line(event, &mut text);
            out.extend_from_slice(text.trim_end().as_bytes());
        }
    }
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
        _ => "NONE",
    });
    let action = match (e.event, e.decision, method) {
        (EventKind::Reload | EventKind::Start | EventKind::Rotate, _, _) => "TAG_NONE",
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
        _ if matches!(e.event, EventKind::Start | EventKind::Rotate) => {
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
