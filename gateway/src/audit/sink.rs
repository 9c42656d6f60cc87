//! Where the local record goes: stdout, an append-only file (reopened on SIGUSR1 for
//! logrotate), or syslog datagrams (the writer makes each line an RFC 5424 message, see
//! [`super::syslog`]). Forwarders to collectors are apart, in [`super::forward`].

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use passerelle_config::{AuditSink, SyslogTarget};

use super::syslog::Datagram;

/// Lines to write, and how far writing got (a failing sink is retried from there: nothing
/// is written twice, nothing skipped).
#[derive(Default)]
pub struct Batch {
    pub bytes: Vec<u8>,
    /// Each line's end (after its newline).
    pub lines: Vec<usize>,
    done_bytes: usize,
    done_lines: usize,
}

impl Batch {
    pub fn push(&mut self, line: &[u8]) {
        self.bytes.extend_from_slice(line);
        self.bytes.push(b'\n');
        self.lines.push(self.bytes.len());
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
    Syslog(Datagram),
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
                out: Out::Syslog(match target {
                    SyslogTarget::Unix(path) => Datagram::unix(path)?,
                    SyslogTarget::Udp(addr) => Datagram::udp(&addr.ip().to_string(), addr.port())?,
                }),
                path: None,
            },
        })
    }

    /// Syslog takes RFC 5424 messages, one per datagram.
    pub fn is_syslog(&self) -> bool {
        matches!(self.out, Out::Syslog(_))
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
            Out::Syslog(socket) => {
                while batch.done_lines < batch.lines.len() {
                    let start = match batch.done_lines {
                        0 => 0,
                        n => batch.lines[n - 1],
                    };
                    let end = batch.lines[batch.done_lines];
                    socket.send(&batch.bytes[start..end - 1])?;
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
