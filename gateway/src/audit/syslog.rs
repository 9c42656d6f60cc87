//! Syslog as collectors read it: RFC 5424 messages (facility local0, severity info, warning
//! for refusals) whose structured data carries the record's place in the chain, framed by
//! octet counting on streams (RFC 6587, RFC 5425) and sent whole as datagrams (RFC 5426, or
//! a local Unix socket).

use std::io::Write as _;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use crate::record::{AuditEvent, Decision, SCHEMA};

/// The structured-data element's ID: `passerelle` under the enterprise number RFC 5612
/// reserves for documentation, until Passerelle has its own.
pub const SD_ID: &str = "passerelle@32473";

/// The header fields that are the sender's, not the record's.
#[derive(Debug, Clone)]
pub struct Origin {
    hostname: String,
    pid: u32,
}

impl Origin {
    /// This host and process.
    pub fn local() -> Origin {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| printable(h.trim(), 255))
            .unwrap_or_default();
        Origin {
            hostname: if hostname.is_empty() {
                "-".into()
            } else {
                hostname
            },
            pid: std::process::id(),
        }
    }
}

/// RFC 5424 header fields are printable US-ASCII without spaces.
fn printable(text: &str, max: usize) -> String {
    text.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect()
}

/// `<PRI>1 TIMESTAMP HOST passerelle PID audit [passerelle@32473 schema= run= seq= chain=
/// epoch=] BODY`: the record's own time, so a message sent again is the same message.
pub fn message(origin: &Origin, event: &AuditEvent, body: &[u8], out: &mut Vec<u8>) {
    let severity = if event.decision == Some(Decision::Deny) {
        4
    } else {
        6
    };
    let priority = 16 * 8 + severity;
    let ts = if event.ts.is_empty() { "-" } else { &event.ts };
    let _ = write!(
        out,
        "<{priority}>1 {ts} {} passerelle {} audit [{SD_ID} schema=\"{}\" run=\"{}\" seq=\"{}\"",
        origin.hostname,
        origin.pid,
        sd_value(SCHEMA),
        sd_value(&event.run),
        event.seq
    );
    if let Some(chain) = &event.chain {
        let _ = write!(out, " chain=\"{}\"", sd_value(chain));
    }
    if let Some(epoch) = event.key_epoch {
        let _ = write!(out, " epoch=\"{epoch}\"");
    }
    out.extend_from_slice(b"] ");
    // Our formats never hold a raw line break; a stream would take one for the next message.
    out.extend(
        body.iter()
            .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }),
    );
}

/// A PARAM-VALUE: `"`, `\` and `]` escaped (RFC 5424 6.3.3).
fn sd_value(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains(['"', '\\', ']']) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 4);
    for c in text.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out.into()
}

/// The values of our structured-data element in a line as a collector wrote it, if there.
pub fn sd_params(line: &str) -> Option<Vec<(&str, String)>> {
    let start = line.find(&format!("[{SD_ID} "))? + SD_ID.len() + 2;
    let mut params = Vec::new();
    let mut rest = &line[start..];
    loop {
        rest = rest.trim_start();
        if rest.starts_with(']') {
            return Some(params);
        }
        let (name, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (_, '\\') => value.push(chars.next()?.1),
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        params.push((name, value));
        rest = &after[end + 1..];
    }
}

/// Octet-counting framing: `LEN SP MSG`.
pub fn frame(message: &[u8], out: &mut Vec<u8>) {
    let _ = write!(out, "{} ", message.len());
    out.extend_from_slice(message);
}

/// A datagram socket toward a collector.
pub enum Datagram {
    Udp(UdpSocket, SocketAddr),
    Unix(UnixDatagram, PathBuf),
}

impl Datagram {
    /// UDP toward `host:port`, bound to the target's family (an IPv6 collector needs an IPv6
    /// socket).
    pub fn udp(host: &str, port: u16) -> std::io::Result<Datagram> {
        let target = (host, port).to_socket_addrs()?.next().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{host} has no address"),
            )
        })?;
        let local: SocketAddr = match target {
            SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        Ok(Datagram::Udp(UdpSocket::bind(local)?, target))
    }

    /// A local Unix datagram socket (`/dev/log`, a collector's).
    pub fn unix(path: &Path) -> std::io::Result<Datagram> {
        Ok(Datagram::Unix(UnixDatagram::unbound()?, path.to_path_buf()))
    }

    /// Sends return at once (EAGAIN when the receiver is behind) instead of waiting.
    pub fn nonblocking(self) -> std::io::Result<Datagram> {
        match &self {
            Datagram::Udp(s, _) => s.set_nonblocking(true)?,
            Datagram::Unix(s, _) => s.set_nonblocking(true)?,
        }
        Ok(self)
    }

    pub fn send(&self, message: &[u8]) -> std::io::Result<()> {
        match self {
            Datagram::Udp(s, to) => s.send_to(message, to).map(drop),
            Datagram::Unix(s, to) => s.send_to(message, to).map(drop),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_carries_the_chain_in_its_structured_data_and_reads_back() {
        let event = AuditEvent {
            seq: 7,
            run: "0a1b2c3d".into(),
            ts: "2026-12-03T10:00:00.000Z".into(),
            decision: Some(Decision::Deny),
            chain: Some("ab".repeat(32)),
            key_epoch: Some(3),
            ..AuditEvent::default()
        };
        let origin = Origin {
            hostname: "jump".into(),
            pid: 42,
        };
        let mut out = Vec::new();
        message(&origin, &event, b"{\"a\":\"x\ny\"}", &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            format!("<132>1 2026-12-03T10:00:00.000Z jump passerelle 42 audit [passerelle@32473 schema=\"passerelle/2\" run=\"0a1b2c3d\" seq=\"7\" chain=\"{}\" epoch=\"3\"] {{\"a\":\"x y\"}}", "ab".repeat(32))
        );
        let params = sd_params(&text).unwrap();
        assert_eq!(params[2], ("seq", "7".to_string()));
        assert_eq!(params[4], ("epoch", "3".to_string()));
        assert_eq!(
            sd_params(r#"x [passerelle@32473 run="a\"b\]c" seq="1"] m"#).unwrap(),
            vec![("run", "a\"b]c".to_string()), ("seq", "1".to_string())]
        );
        assert_eq!(sd_value("a\"]\\"), "a\\\"\\]\\\\");
        let mut framed = Vec::new();
        frame(b"hello", &mut framed);
        assert_eq!(framed, b"5 hello");
    }
}
