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
            if serde_json::to_writer(&mut *out, event).is_ok() {
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
        "{secs}.{millis:03} {:>6} {client} {action}/{:03} {} {method} {url} - {hierarchy} -",
        e.duration_ms,
        e.status.unwrap_or(0),
        e.bytes_down
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
