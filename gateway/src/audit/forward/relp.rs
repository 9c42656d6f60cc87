//! RELP's framing (rsyslog's Reliable Event Logging Protocol, as librelp's `doc/relp.md`
//! defines it): `TXNR SP COMMAND SP DATALEN [SP DATA] LF`, the session's `open` offers, and
//! the `rsp` answers the collector sends, in order, one per command.

use std::fmt;

/// Transaction numbers run from 1 to 999,999,999, then wrap to 1 (0 is for hints).
pub const MAX_TXNR: u64 = 999_999_999;
/// librelp refuses larger frames than its negotiated maximum; rsyslog's default is 128 KiB.
pub const MAX_DATA: usize = 128 * 1024;

/// One frame: what the client sends or the collector answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub txnr: u64,
    pub command: String,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("a RELP frame's {0} is malformed")]
    Malformed(&'static str),
    #[error("a RELP frame announces {0} bytes of data, more than {MAX_DATA}")]
    TooLong(usize),
}

/// Appends one frame.
pub fn encode(txnr: u64, command: &str, data: &[u8], out: &mut Vec<u8>) {
    use std::io::Write as _;
    let _ = write!(out, "{txnr} {command} {}", data.len());
    if !data.is_empty() {
        out.push(b' ');
        out.extend_from_slice(data);
    }
    out.push(b'\n');
}

/// The next whole frame at the start of `buf` and its length; `None` until it is all there.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
    let mut at = 0;
    let Some(txnr) = number(buf, &mut at, "transaction number")? else {
        return Ok(None);
    };
    let Some(command) = word(buf, &mut at)? else {
        return Ok(None);
    };
    let Some(len) = number(buf, &mut at, "data length")? else {
        return Ok(None);
    };
    let len = usize::try_from(len).map_err(|_| FrameError::TooLong(usize::MAX))?;
    if len > MAX_DATA {
        return Err(FrameError::TooLong(len));
    }
    // After DATALEN: SP DATA LF, or LF alone when there is no data.
    let data_start = if len == 0 {
        at
    } else {
        match buf.get(at) {
            None => return Ok(None),
            Some(b' ') => at + 1,
            Some(_) => return Err(FrameError::Malformed("data length")),
        }
    };
    let end = data_start + len;
    match buf.get(end) {
        None => Ok(None),
        Some(b'\n') => Ok(Some((
            Frame {
                txnr,
                command,
                data: buf[data_start..end].to_vec(),
            },
            end + 1,
        ))),
        Some(_) => Err(FrameError::Malformed("trailer")),
    }
}

/// 1 to 9 digits then a space (or, for the data length, a space or LF left in place).
fn number(buf: &[u8], at: &mut usize, what: &'static str) -> Result<Option<u64>, FrameError> {
    let start = *at;
    let mut n = 0u64;
    loop {
        match buf.get(*at) {
            None if *at - start > 9 => return Err(FrameError::Malformed(what)),
            None => return Ok(None),
            Some(b) if b.is_ascii_digit() => {
                if *at - start == 9 {
                    return Err(FrameError::Malformed(what));
                }
                n = n * 10 + u64::from(b - b'0');
                *at += 1;
            }
            Some(b' ') | Some(b'\n') if *at > start => {
                if buf[*at] == b' ' && what == "transaction number" {
                    *at += 1;
                }
                return Ok(Some(n));
            }
            Some(_) => return Err(FrameError::Malformed(what)),
        }
    }
}

/// 1 to 32 letters then a space.
fn word(buf: &[u8], at: &mut usize) -> Result<Option<String>, FrameError> {
    let start = *at;
    loop {
        match buf.get(*at) {
            None => return Ok(None),
            Some(b) if b.is_ascii_alphabetic() && *at - start < 32 => *at += 1,
            Some(b' ') if *at > start => {
                let w = String::from_utf8_lossy(&buf[start..*at]).into_owned();
                *at += 1;
                return Ok(Some(w));
            }
            Some(_) => return Err(FrameError::Malformed("command")),
        }
    }
}

/// The `open` command's offers.
pub fn open_offers() -> Vec<u8> {
    format!(
        "relp_version=0\nrelp_software=passerelle,{},https://passerelle.invalid\ncommands=syslog",
        env!("CARGO_PKG_VERSION")
    )
    .into_bytes()
}

/// A `rsp` frame's data: `CODE [SP TEXT] [LF DATA]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub code: u16,
    pub text: String,
    pub data: Vec<u8>,
}

impl Response {
    pub fn parse(data: &[u8]) -> Result<Response, FrameError> {
        let (head, rest) = match data.iter().position(|&b| b == b'\n') {
            Some(i) => (&data[..i], data[i + 1..].to_vec()),
            None => (data, Vec::new()),
        };
        let head = String::from_utf8_lossy(head);
        let (code, text) = head.split_once(' ').unwrap_or((&head, ""));
        let code = code
            .parse()
            .ok()
            .filter(|c| (100..1000).contains(c))
            .ok_or(FrameError::Malformed("response code"))?;
        Ok(Response {
            code,
            text: text.to_string(),
            data: rest,
        })
    }

    pub fn ok(&self) -> bool {
        self.code == 200
    }
}

impl fmt::Display for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

/// What the collector accepted of our offers: it must speak a RELP version and take syslog.
pub fn check_open(answer: &Response) -> Result<(), String> {
    if !answer.ok() {
        return Err(format!("the collector refused the session: {answer}"));
    }
    let offers = String::from_utf8_lossy(&answer.data);
    let mut version = false;
    let mut syslog = false;
    for line in offers.lines() {
        match line.split_once('=') {
            Some(("relp_version", _)) => version = true,
            Some(("commands", list)) => syslog = list.split(',').any(|c| c == "syslog"),
            _ => {}
        }
    }
    match (version, syslog) {
        (true, true) => Ok(()),
        (false, _) => Err("the collector's answer to open has no relp_version".into()),
        (_, false) => Err("the collector does not take the syslog command".into()),
    }
}

/// The transaction number after `txnr`.
pub fn next_txnr(txnr: u64) -> u64 {
    if txnr >= MAX_TXNR {
        1
    } else {
        txnr + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_byte_by_byte() {
        let mut out = Vec::new();
        encode(1, "open", &open_offers(), &mut out);
        encode(2, "syslog", b"<134>1 - - - - - - x", &mut out);
        encode(3, "close", b"", &mut out);
        assert!(
            out.ends_with(b"3 close 0\n"),
            "{:?}",
            String::from_utf8_lossy(&out)
        );
        // Fed one byte at a time, as a slow socket would: no frame until it is whole.
        let mut frames = Vec::new();
        let mut buf = Vec::new();
        for &b in &out {
            buf.push(b);
            while let Some((frame, used)) = decode(&buf).unwrap() {
                frames.push(frame);
                buf.drain(..used);
            }
        }
        assert!(buf.is_empty());
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[1].txnr, 2);
        assert_eq!(frames[1].command, "syslog");
        assert_eq!(frames[1].data, b"<134>1 - - - - - - x");
        assert_eq!(frames[2].data, b"");
    }

    #[test]
    fn rsyslog_s_answers_parse() {
        // As imrelp answers an open and a syslog command (librelp's relpsess.c).
        let wire = b"1 rsp 93 200 OK\nrelp_version=0\nrelp_software=librelp,1.11.0,http://librelp.adiscon.com\ncommands=syslog\n2 rsp 6 200 OK\n0 serverclose 0\n";
        let (open, used) = decode(wire).unwrap().unwrap();
        assert_eq!((open.txnr, open.command.as_str()), (1, "rsp"));
        let answer = Response::parse(&open.data).unwrap();
        assert!(check_open(&answer).is_ok(), "{answer:?}");
        let (ack, used2) = decode(&wire[used..]).unwrap().unwrap();
        assert!(Response::parse(&ack.data).unwrap().ok());
        let (hint, _) = decode(&wire[used + used2..]).unwrap().unwrap();
        assert_eq!((hint.txnr, hint.command.as_str()), (0, "serverclose"));
        let refused = Response::parse(b"500 not accepted").unwrap();
        assert!(!refused.ok());
        assert!(check_open(&refused)
            .unwrap_err()
            .contains("500 not accepted"));
        let no_syslog = Response::parse(b"200 OK\nrelp_version=0\ncommands=eventlog").unwrap();
        assert!(check_open(&no_syslog).unwrap_err().contains("syslog"));
    }

    #[test]
    fn bad_frames_are_errors_not_hangs() {
        for bad in [
            &b"x rsp 0\n"[..],
            b"1 r5p 0\n",
            b"1234567890 rsp 0\n",
            b"1 rsp 3 abcX",
            b"1 rsp 3Xabc\n",
            b"1 rsp 999999999 ",
        ] {
            assert!(decode(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(decode(b"12 rs").unwrap(), None);
        assert_eq!(next_txnr(MAX_TXNR), 1);
        assert_eq!(next_txnr(7), 8);
    }
}
