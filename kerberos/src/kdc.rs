//! `doctor`'s own look at a KDC, without the library in between: an AS-REQ without
//! pre-authentication for the gateway's principal, which costs the account nothing (no
//! password is tried) and brings back a KRB-ERROR that tells whether the KDC answers (UDP,
//! TCP), its clock (the error carries its time), whether it knows the principal, and the
//! encryption types it holds keys of (the pre-authentication hints).
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What one KDC said to the probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A KRB-ERROR: its code, the KDC's time, and for `PREAUTH_REQUIRED` the encryption types
    /// it holds the principal's keys in.
    Error {
        code: i32,
        stime: SystemTime,
        etypes: Vec<i32>,
    },
    /// An AS-REP: the KDC gave a ticket without pre-authentication.
    Ticket,
}

/// The KRB-ERROR codes doctor names.
pub const PRINCIPAL_UNKNOWN: i32 = 6;
pub const CLIENT_REVOKED: i32 = 18;
pub const PREAUTH_REQUIRED: i32 = 25;
pub const WRONG_REALM: i32 = 68;

/// `KDC_ERR_…` in words.
pub fn error_name(code: i32) -> String {
    match code {
        PRINCIPAL_UNKNOWN => {
            "the KDC does not know this principal (KDC_ERR_C_PRINCIPAL_UNKNOWN)".into()
        }
        CLIENT_REVOKED => {
            "the account is disabled, locked or expired (KDC_ERR_CLIENT_REVOKED)".into()
        }
        PREAUTH_REQUIRED => "pre-authentication required (KDC_ERR_PREAUTH_REQUIRED)".into(),
        WRONG_REALM => "another realm holds this principal (KDC_ERR_WRONG_REALM)".into(),
        14 => "no encryption type in common (KDC_ERR_ETYPE_NOSUPP)".into(),
        other => format!("KRB-ERROR {other}"),
    }
}

const ETYPES: [i32; 5] = [18, 17, 20, 19, 23];

/// The AS-REQ for `user@realm`, asking for `krbtgt/realm`, without pre-authentication.
pub fn as_req(user: &str, realm: &str, nonce: u32) -> Vec<u8> {
    let names = |parts: &[&str], kind: i64| {
        seq(&[
            ctx(0, &int(kind)),
            ctx(
                1,
                &seq(&parts
                    .iter()
                    .map(|p| tlv(0x1B, p.as_bytes()))
                    .collect::<Vec<_>>()),
            ),
        ])
    };
    let user_parts: Vec<&str> = user.split('/').collect();
    let body = seq(&[
        ctx(0, &tlv(0x03, &[0, 0, 0, 0, 0])),
        ctx(1, &names(&user_parts, 1)),
        ctx(2, &tlv(0x1B, realm.as_bytes())),
        ctx(3, &names(&["krbtgt", realm], 2)),
        ctx(5, &tlv(0x18, b"20370913024805Z")),
        ctx(7, &int(i64::from(nonce & 0x7fff_ffff))),
        ctx(
            8,
            &seq(&ETYPES
                .iter()
                .map(|e| int(i64::from(*e)))
                .collect::<Vec<_>>()),
        ),
    ]);
    tlv(
        0x6A,
        &seq(&[ctx(1, &int(5)), ctx(2, &int(10)), ctx(4, &body)]),
    )
}

fn len(n: usize, out: &mut Vec<u8>) {
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes = n.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    len(content.len(), &mut out);
    out.extend_from_slice(content);
    out
}

fn ctx(n: u8, content: &[u8]) -> Vec<u8> {
    tlv(0xA0 | n, content)
}

fn seq(items: &[Vec<u8>]) -> Vec<u8> {
    tlv(0x30, &items.concat())
}

fn int(v: i64) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let mut start = 0;
    while start < 7
        && ((bytes[start] == 0 && bytes[start + 1] & 0x80 == 0)
            || (bytes[start] == 0xff && bytes[start + 1] & 0x80 != 0))
    {
        start += 1;
    }
    tlv(0x02, &bytes[start..])
}

/// One DER element: its tag, its content, and what follows it.
fn element(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = data.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (n, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let width = usize::from(first & 0x7f);
        if width == 0 || width > 4 || rest.len() < width {
            return None;
        }
        let n = rest[..width]
            .iter()
            .fold(0usize, |n, &b| (n << 8) | usize::from(b));
        (n, &rest[width..])
    };
    if rest.len() < n {
        return None;
    }
    Some((tag, &rest[..n], &rest[n..]))
}

/// The elements of a constructed element's content.
fn elements(mut data: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while let Some((tag, content, rest)) = element(data) {
        out.push((tag, content));
        data = rest;
    }
    out
}

fn integer(data: &[u8]) -> Option<i64> {
    let (tag, content, _) = element(data)?;
    if tag != 0x02 || content.is_empty() || content.len() > 8 {
        return None;
    }
    let negative = content[0] & 0x80 != 0;
    Some(
        content
            .iter()
            .fold(if negative { -1i64 } else { 0 }, |n, &b| {
                (n << 8) | i64::from(b)
            }),
    )
}

/// `YYYYMMDDHHMMSSZ`.
fn generalized_time(data: &[u8]) -> Option<SystemTime> {
    let (tag, content, _) = element(data)?;
    let text = std::str::from_utf8(content).ok()?;
    if tag != 0x18 || text.len() != 15 || !text.ends_with('Z') {
        return None;
    }
    let field = |range: std::ops::Range<usize>| text.get(range)?.parse::<i64>().ok();
    let (y, m, d) = (field(0..4)?, field(4..6)?, field(6..8)?);
    let (hh, mm, ss) = (field(8..10)?, field(10..12)?, field(12..14)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// Reads a KDC's reply to the probe.
pub fn parse(reply: &[u8]) -> Result<Answer, String> {
    let (tag, content, _) = element(reply).ok_or("not a Kerberos message")?;
    match tag {
        0x6B => Ok(Answer::Ticket),
        0x7E => {
            let (_, fields, _) = element(content).ok_or("a KRB-ERROR without its fields")?;
            let mut code = None;
            let mut stime = None;
            let mut usec = 0;
            let mut etypes = Vec::new();
            for (tag, value) in elements(fields) {
                match tag {
                    0xA4 => stime = generalized_time(value),
                    0xA5 => usec = integer(value).unwrap_or(0),
                    0xA6 => code = integer(value),
                    0xAC => etypes = hinted_etypes(value),
                    _ => {}
                }
            }
            let stime = stime.ok_or("a KRB-ERROR without the KDC's time")?
                + Duration::from_micros(u64::try_from(usec).unwrap_or(0));
            Ok(Answer::Error {
                code: code.ok_or("a KRB-ERROR without its code")? as i32,
                stime,
                etypes,
            })
        }
        other => Err(format!(
            "an answer of type {other:#x}, not a KRB-ERROR nor an AS-REP"
        )),
    }
}

/// The encryption types of `PA-ETYPE-INFO2` (19) in a `PREAUTH_REQUIRED` error's e-data.
fn hinted_etypes(edata: &[u8]) -> Vec<i32> {
    let Some((0x04, method_data, _)) = element(edata) else {
        return Vec::new();
    };
    let Some((0x30, padata, _)) = element(method_data) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (_, pa) in elements(padata) {
        let fields = elements(pa);
        let kind = fields
            .iter()
            .find(|(t, _)| *t == 0xA1)
            .and_then(|(_, v)| integer(v));
        let value = fields.iter().find(|(t, _)| *t == 0xA2).map(|(_, v)| *v);
        if let (Some(19), Some(value)) = (kind, value) {
            let Some((0x04, info, _)) = element(value) else {
                continue;
            };
            let Some((0x30, entries, _)) = element(info) else {
                continue;
            };
            for (_, entry) in elements(entries) {
                if let Some(etype) = elements(entry)
                    .iter()
                    .find(|(t, _)| *t == 0xA0)
                    .and_then(|(_, v)| integer(v))
                {
                    out.push(etype as i32);
                }
            }
        }
    }
    out
}

/// How the probe went over one transport.
#[derive(Debug, Clone)]
pub struct Probed {
    pub kdc: String,
    pub udp: Result<Answer, String>,
    pub tcp: Result<Answer, String>,
}

/// Asks `kdc` (`host[:port]`, 88 by default) over UDP and TCP.
pub fn probe(kdc: &str, user: &str, realm: &str, timeout: Duration) -> Probed {
    let request = as_req(user, realm, rand::random());
    let addr = resolve(kdc);
    let udp = addr.clone().and_then(|a| udp(a, &request, timeout));
    let tcp = addr.and_then(|a| tcp(a, &request, timeout));
    Probed {
        kdc: kdc.to_string(),
        udp: udp.and_then(|r| parse(&r)),
        tcp: tcp.and_then(|r| parse(&r)),
    }
}

fn resolve(kdc: &str) -> Result<SocketAddr, String> {
    let with_port = if kdc
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        kdc.to_string()
    } else {
        format!("{kdc}:88")
    };
    with_port
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {kdc}: {e}"))?
        .next()
        .ok_or_else(|| format!("{kdc} has no address"))
}

fn udp(addr: SocketAddr, request: &[u8], timeout: Duration) -> Result<Vec<u8>, String> {
    let local: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).map_err(|e| e.to_string())?;
    socket.connect(addr).map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    socket.send(request).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 65_536];
    let n = socket.recv(&mut buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            format!("no answer on {addr}/udp within {}s", timeout.as_secs())
        }
        _ => format!("{addr}/udp: {e}"),
    })?;
    buf.truncate(n);
    Ok(buf)
}

fn tcp(addr: SocketAddr, request: &[u8], timeout: Duration) -> Result<Vec<u8>, String> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("cannot connect to {addr}/tcp: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut framed = (request.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(request);
    stream.write_all(&framed).map_err(|e| e.to_string())?;
    let mut size = [0u8; 4];
    stream
        .read_exact(&mut size)
        .map_err(|e| format!("no answer on {addr}/tcp: {e}"))?;
    let size = u32::from_be_bytes(size) as usize;
    if size > 65_536 {
        return Err(format!("{addr}/tcp announced {size} bytes"));
    }
    let mut reply = vec![0u8; size];
    stream
        .read_exact(&mut reply)
        .map_err(|e| format!("{addr}/tcp: {e}"))?;
    Ok(reply)
}

/// What `krb5.conf` says that doctor reports: the realm's KDCs and the name settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    pub kdcs: Vec<String>,
    pub dns_lookup_kdc: Option<bool>,
    pub dns_canonicalize_hostname: Option<String>,
    pub rdns: Option<bool>,
}

/// Reads the `[libdefaults]` settings and `realm`'s `kdc` lines from krb5.conf's text.
pub fn profile(text: &str, realm: &str) -> Profile {
    let mut out = Profile::default();
    let mut section = String::new();
    let mut in_realm = false;
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("").trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_string();
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            if line == "}" {
                in_realm = false;
            }
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        let flag = || {
            matches!(
                value.to_ascii_lowercase().as_str(),
                "true" | "yes" | "1" | "on"
            )
        };
        match section.as_str() {
            "libdefaults" => match key {
                "dns_lookup_kdc" => out.dns_lookup_kdc = Some(flag()),
                "dns_canonicalize_hostname" => {
                    out.dns_canonicalize_hostname = Some(value.to_ascii_lowercase())
                }
                "rdns" => out.rdns = Some(flag()),
                _ => {}
            },
            "realms" => {
                if value == "{" {
                    in_realm = key == realm;
                } else if in_realm && key == "kdc" {
                    out.kdcs.push(value.to_string());
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_as_req_is_well_formed_der() {
        let req = as_req("svc-covotem", "CHU.LOCAL", 0x1234_5678);
        let (tag, content, rest) = element(&req).unwrap();
        assert_eq!((tag, rest.len()), (0x6A, 0));
        let (tag, fields, _) = element(content).unwrap();
        assert_eq!(tag, 0x30);
        let fields = elements(fields);
        assert_eq!(
            fields.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            [0xA1, 0xA2, 0xA4]
        );
        assert_eq!(integer(fields[0].1), Some(5));
        assert_eq!(integer(fields[1].1), Some(10));
        assert_eq!(int(-1), [0x02, 0x01, 0xff]);
        assert_eq!(int(128), [0x02, 0x02, 0x00, 0x80]);
        let mut long = Vec::new();
        len(300, &mut long);
        assert_eq!(long, [0x82, 0x01, 0x2c]);
    }

    #[test]
    fn a_krb_error_gives_its_code_time_and_etypes() {
        // KRB-ERROR as MIT's KDC sends it for PREAUTH_REQUIRED, reduced to what is read.
        let etype_info2 = seq(&[seq(&[ctx(0, &int(18))]), seq(&[ctx(0, &int(17))])]);
        let method_data = seq(&[seq(&[ctx(1, &int(19)), ctx(2, &tlv(0x04, &etype_info2))])]);
        let error = tlv(
            0x7E,
            &seq(&[
                ctx(0, &int(5)),
                ctx(1, &int(30)),
                ctx(4, &tlv(0x18, b"20261203103000Z")),
                ctx(5, &int(250_000)),
                ctx(6, &int(25)),
                ctx(9, &tlv(0x1B, b"CHU.LOCAL")),
                ctx(12, &tlv(0x04, &method_data)),
            ]),
        );
        let Answer::Error {
            code,
            stime,
            etypes,
        } = parse(&error).unwrap()
        else {
            panic!("not an error");
        };
        assert_eq!((code, etypes), (PREAUTH_REQUIRED, vec![18, 17]));
        assert_eq!(
            stime,
            UNIX_EPOCH + Duration::from_secs(1_796_293_800) + Duration::from_millis(250)
        );
        assert_eq!(parse(&tlv(0x6B, &[])).unwrap(), Answer::Ticket);
        assert!(parse(b"\x30\x05junk").is_err());
        assert!(parse(b"").is_err());
    }

    #[test]
    fn the_profile_gives_the_realm_s_kdcs_and_the_name_settings() {
        let text = "[libdefaults]\n  default_realm = CHU.LOCAL\n  rdns = false\n  dns_canonicalize_hostname = fallback # MIT 1.18\n\
                    [realms]\n  OTHER = {\n    kdc = dc9.other\n  }\n  CHU.LOCAL = {\n    kdc = dc1.chu.local\n    kdc = dc2.chu.local:88\n  }\n";
        let p = profile(text, "CHU.LOCAL");
        assert_eq!(p.kdcs, ["dc1.chu.local", "dc2.chu.local:88"]);
        assert_eq!(p.rdns, Some(false));
        assert_eq!(p.dns_canonicalize_hostname.as_deref(), Some("fallback"));
        assert_eq!(p.dns_lookup_kdc, None);
    }
}
