//! Where audit lines go: stdout, an append-only file (reopened on SIGUSR1 for logrotate), or
//! syslog: RFC 5424 datagrams, facility local0, severity info (warning for refusals), through
//! the `syslog` crate's transports with our own header (MSGID `audit`).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use passerelle_config::{AuditSink, SyslogTarget};
use syslog::{LogFormat, Logger, LoggerBackend};

/// How urgent a line is, for syslog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Info,
    Warning,
}

/// Lines to write, and how far writing got (a failing sink is retried from there: nothing
/// is written twice, nothing skipped).
#[derive(Default)]
pub struct Batch {
    pub bytes: Vec<u8>,
    /// Each line's end (after its newline) and severity.
    pub lines: Vec<(usize, Severity)>,
    done_bytes: usize,
    done_lines: usize,
}

impl Batch {
    pub fn push(&mut self, line: &[u8], severity: Severity) {
        self.bytes.extend_from_slice(line);
        self.bytes.push(b'\n');
        self.lines.push((self.bytes.len(), severity));
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
        self.lines.clear();
        self.done_bytes = 0;
        self.done_lines = 0;
    }
}

pub struct Sink {
    out: Out,
    path: Option<PathBuf>,
}

enum Out {
    Stdout(std::io::Stdout),
    File(std::fs::File),
    Syslog(Box<Logger<LoggerBackend, Rfc5424>>),
}

impl Sink {
    pub fn open(sink: &AuditSink) -> std::io::Result<Sink> {
        Ok(match sink {
            AuditSink::Stdout => Sink {
                out: Out::Stdout(std::io::stdout()),
                path: None,
            },
            AuditSink::File(path) => Sink {
                out: Out::File(append(path)?),
                path: Some(path.clone()),
            },
            AuditSink::Syslog(target) => Sink {
                out: Out::Syslog(Box::new(syslog_logger(target)?)),
                path: None,
            },
        })
    }

    /// The file, for a file sink.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Writes what is left of `batch`; on an error, what was written stays written.
    pub fn write(&mut self, batch: &mut Batch) -> std::io::Result<()> {
        match &mut self.out {
            Out::Stdout(out) => write_bytes(out, batch),
            Out::File(out) => write_bytes(out, batch),
            Out::Syslog(logger) => {
                while batch.done_lines < batch.lines.len() {
                    let start = match batch.done_lines {
                        0 => 0,
                        n => batch.lines[n - 1].0,
                    };
                    let (end, severity) = batch.lines[batch.done_lines];
                    let line = String::from_utf8_lossy(&batch.bytes[start..end - 1]);
                    let sent = match severity {
                        Severity::Info => logger.info(line.as_ref()),
                        Severity::Warning => logger.warning(line.as_ref()),
                    };
                    sent.map_err(|e| match e {
                        syslog::Error::Write(e) | syslog::Error::Io(e) => e,
                        other => std::io::Error::other(other.to_string()),
                    })?;
                    batch.done_lines += 1;
                }
                Ok(())
            }
        }
    }

    /// Reopens a file sink (after logrotate moved it away); other sinks stay as they are.
    pub fn reopen(&mut self) -> std::io::Result<()> {
        if let (Some(path), Out::File(file)) = (&self.path, &mut self.out) {
            let _ = file.flush();
            *file = append(path)?;
        }
        Ok(())
    }
}

fn write_bytes(out: &mut impl Write, batch: &mut Batch) -> std::io::Result<()> {
    while batch.done_bytes < batch.bytes.len() {
        match out.write(&batch.bytes[batch.done_bytes..]) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    "the sink takes no more bytes",
                ))
            }
            Ok(n) => batch.done_bytes += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    batch.done_lines = batch.lines.len();
    out.flush()
}

fn append(path: &PathBuf) -> std::io::Result<std::fs::File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn syslog_logger(target: &SyslogTarget) -> std::io::Result<Logger<LoggerBackend, Rfc5424>> {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "-".to_string());
    let formatter = Rfc5424 {
        hostname,
        pid: std::process::id(),
    };
    let logger = match target {
        SyslogTarget::Unix(path) => syslog::unix_custom(formatter, path),
        SyslogTarget::Udp(addr) => {
            let local: std::net::SocketAddr = if addr.ip().is_loopback() {
                (std::net::Ipv4Addr::LOCALHOST, 0).into()
            } else {
                (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
            };
            syslog::udp(formatter, local, *addr)
        }
    };
    logger.map_err(|e| std::io::Error::other(e.to_string()))
}

/// `<PRI>1 TIMESTAMP HOST passerelle PID audit - LINE`, facility local0.
pub struct Rfc5424 {
    hostname: String,
    pid: u32,
}

impl LogFormat<&str> for Rfc5424 {
    fn format<W: Write>(
        &self,
        w: &mut W,
        severity: syslog::Severity,
        line: &str,
    ) -> syslog::Result<()> {
        let priority = syslog::Facility::LOG_LOCAL0 as u8 | severity as u8;
        let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
        // One write: the crate sends it as one datagram.
        write!(
            w,
            "<{priority}>1 {now} {} passerelle {} audit - {line}",
            self.hostname, self.pid
        )
        .map_err(syslog::Error::Write)
    }
}
