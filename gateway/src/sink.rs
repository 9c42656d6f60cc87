//! Where audit lines go, and in which shape: stdout, an append-only file (reopened on
//! SIGUSR1 for logrotate), or RFC 5424 syslog datagrams; JSON or Squid's access.log line.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

use passerelle_config::{AuditFormat, AuditSink, SyslogTarget};

use crate::audit::AuditEvent;

/// An open sink.
pub struct Sink {
    out: Box<dyn Write + Send>,
    path: Option<PathBuf>,
}

impl Sink {
    pub fn open(sink: &AuditSink) -> std::io::Result<Sink> {
        Ok(match sink {
            AuditSink::Stdout => Sink {
                out: Box::new(std::io::stdout()),
                path: None,
            },
            AuditSink::File(path) => Sink {
                out: Box::new(append(path)?),
                path: Some(path.clone()),
            },
            AuditSink::Syslog(target) => Sink {
                out: Box::new(Syslog::connect(target)?),
                path: None,
            },
        })
    }

    /// Reopens a file sink (after logrotate moved it); other sinks stay as they are.
    pub fn reopen(&mut self) {
        if let Some(path) = &self.path {
            match append(path) {
                Ok(file) => {
                    let _ = self.out.flush();
                    self.out = Box::new(file);
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "audit.reopen.failed: still writing to the old file")
                }
            }
        }
    }

    pub fn out(&mut self) -> &mut Box<dyn Write + Send> {
        &mut self.out
    }
}

fn append(path: &PathBuf) -> std::io::Result<std::fs::File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Appends `event` as one line in `format`.
pub fn format_line(event: &AuditEvent, format: AuditFormat, out: &mut Vec<u8>) {
    match format {
        AuditFormat::Json => {
            let start = out.len();
            if serde_json::to_writer(&mut *out, event).is_ok() {
                escape_line_separators(out, start);
                out.push(b'\n');
            }
        }
        AuditFormat::Squid => {
            let mut line = String::with_capacity(200);
            squid_line(event, &mut line);
            out.extend_from_slice(line.as_bytes());
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
    let method = e.method.as_deref().unwrap_or(if e.event == "reload" {
        "RELOAD"
    } else {
        "NONE"
    });
    let action = match (e.event, e.decision, method) {
        ("reload", _, _) => "TAG_NONE",
        (_, Some("deny"), _) => "TCP_DENIED",
        (_, _, "CONNECT") => "TCP_TUNNEL",
        _ => "TCP_MISS",
    };
    let url = match (&e.host, e.port, method) {
        (Some(host), Some(port), "CONNECT") => format!("{host}:{port}"),
        (Some(host), Some(80), _) => format!("http://{host}{}", e.path.as_deref().unwrap_or("/")),
        (Some(host), Some(port), _) => {
            format!("http://{host}:{port}{}", e.path.as_deref().unwrap_or("/"))
        }
        _ if e.event == "reload" => format!(
            "passerelle:reload/{}",
            if e.decision == Some("allow") {
                "accepted"
            } else {
                "refused"
            }
        ),
        _ => "-".to_string(),
    };
    let hierarchy = match e.route.as_deref() {
        Some("direct") => format!("HIER_DIRECT/{}", e.host.as_deref().unwrap_or("-")),
        Some(parent) if e.decision == Some("allow") => {
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

/// RFC 5424 datagrams, one per line: facility local0, severity info (warning for refusals).
struct Syslog {
    socket: SyslogSocket,
    hostname: String,
    pid: u32,
    pending: Vec<u8>,
}

enum SyslogSocket {
    Unix(UnixDatagram, PathBuf),
    Udp(UdpSocket, SocketAddr),
}

impl Syslog {
    fn connect(target: &SyslogTarget) -> std::io::Result<Syslog> {
        let socket = match target {
            SyslogTarget::Unix(path) => SyslogSocket::Unix(UnixDatagram::unbound()?, path.clone()),
            SyslogTarget::Udp(addr) => {
                let local: SocketAddr = if addr.ip().is_loopback() {
                    (std::net::Ipv4Addr::LOCALHOST, 0).into()
                } else {
                    (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
                };
                SyslogSocket::Udp(UdpSocket::bind(local)?, *addr)
            }
        };
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "-".to_string());
        Ok(Syslog {
            socket,
            hostname,
            pid: std::process::id(),
            pending: Vec::new(),
        })
    }

    fn send(&self, line: &[u8]) -> std::io::Result<()> {
        let text = String::from_utf8_lossy(line);
        let severity = if text.contains("\"decision\":\"deny\"") || text.contains("TCP_DENIED/") {
            4
        } else {
            6
        };
        let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
        let datagram = format!(
            "<{}>1 {now} {} passerelle {} audit - {text}",
            16 * 8 + severity,
            self.hostname,
            self.pid
        );
        match &self.socket {
            SyslogSocket::Unix(socket, path) => {
                socket.send_to(datagram.as_bytes(), path).map(|_| ())
            }
            SyslogSocket::Udp(socket, addr) => {
                socket.send_to(datagram.as_bytes(), addr).map(|_| ())
            }
        }
    }
}

impl Write for Syslog {
    /// Sends one line per call (the writer loops over the rest); a failed send consumes
    /// nothing, so the writer's retry sends it again.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let Some(end) = buf.iter().position(|b| *b == b'\n') else {
            self.pending.extend_from_slice(buf);
            return Ok(buf.len());
        };
        let mut line = std::mem::take(&mut self.pending);
        let kept = line.len();
        line.extend_from_slice(&buf[..end]);
        match self.send(&line) {
            Ok(()) => Ok(end + 1),
            Err(e) => {
                line.truncate(kept);
                self.pending = line;
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn squid(event: &AuditEvent) -> String {
        let mut out = Vec::new();
        format_line(event, AuditFormat::Squid, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn squid_lines_cannot_be_split_or_forged() {
        let event = AuditEvent {
            event: "request",
            client: Some("10.0.0.5:4000".into()),
            method: Some("GET".into()),
            host: Some("covotem.esante-centre.fr".into()),
            port: Some(80),
            path: Some("/a\u{2028}1.2 10.6.6.6 TCP_MISS/200\u{85}x\u{a0}y %z\n".into()),
            decision: Some("allow"),
            route: Some("direct".into()),
            status: Some(200),
            ..AuditEvent::default()
        };
        let line = squid(&event);
        assert_eq!(line.lines().count(), 1, "{line:?}");
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
            event: "request",
            path: Some("/a\u{2028}b\u{2029}c\u{85}d".into()),
            ..AuditEvent::default()
        };
        let mut out = Vec::new();
        format_line(&event, AuditFormat::Json, &mut out);
        let line = String::from_utf8(out).unwrap();
        assert!(line.contains(r"/a\u2028b\u2029c\u0085d"), "{line}");
        let back: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back["path"], "/a\u{2028}b\u{2029}c\u{85}d");
    }
}
