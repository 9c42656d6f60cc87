//! Host names and IP literals in one normal form, so that `WWW.Esante-Centre.fr.`,
//! `[::ffff:164.138.243.29]` and `0xa48af31d` are compared with what the flows list.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv6Net};

/// A request's host: a lowercase DNS name without its trailing dot, or an IP address
/// (IPv4-mapped IPv6 is folded to IPv4).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    Name(String),
    Ip(IpAddr),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("empty host")]
    Empty,
    #[error("host is longer than 253 characters")]
    TooLong,
    #[error("{0:?} is not a valid host name")]
    BadName(String),
    #[error("{0:?} looks like an IPv4 address but is not a valid one")]
    BadIpv4(String),
    #[error("{0:?} is not a valid IPv6 address")]
    BadIpv6(String),
}

impl Host {
    /// Parses a host as it appears in a URI authority or a CONNECT target (IPv6 in brackets).
    /// IPv4 is read the way `inet_aton` and browsers read it (`127.1`, `0x7f.0.0.1`,
    /// `2130706433`), so that no odd spelling slips past a check on the normal form.
    pub fn parse(input: &str) -> Result<Host, HostError> {
        if input.is_empty() {
            return Err(HostError::Empty);
        }
        if let Some(inner) = input.strip_prefix('[') {
            let inner = inner
                .strip_suffix(']')
                .ok_or_else(|| HostError::BadIpv6(input.to_string()))?;
            let ip: Ipv6Addr = inner
                .parse()
                .map_err(|_| HostError::BadIpv6(input.to_string()))?;
            return Ok(Host::Ip(normalize_ip(IpAddr::V6(ip))));
        }
        if input.contains(':') {
            let ip: Ipv6Addr = input
                .parse()
                .map_err(|_| HostError::BadIpv6(input.to_string()))?;
            return Ok(Host::Ip(normalize_ip(IpAddr::V6(ip))));
        }
        let name = input.strip_suffix('.').unwrap_or(input);
        if name.is_empty() {
            return Err(HostError::BadName(input.to_string()));
        }
        if name.len() > 253 {
            return Err(HostError::TooLong);
        }
        let last_label = name.rsplit('.').next().unwrap_or(name);
        if looks_numeric(last_label) {
            return parse_ipv4_loose(name)
                .map(|ip| Host::Ip(IpAddr::V4(ip)))
                .ok_or_else(|| HostError::BadIpv4(input.to_string()));
        }
        let valid = name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
        if !valid {
            return Err(HostError::BadName(input.to_string()));
        }
        Ok(Host::Name(name.to_ascii_lowercase()))
    }
}

/// What is written after a host is not a port.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{written:?} is not a port (1 to 65535, digits only)")]
pub struct PortError {
    pub written: String,
}

/// The one port grammar, for requests and configuration alike: 1 to 65535 in decimal digits
/// only (no sign, no space, no leading `+` that Rust's integer parser would take).
pub fn parse_port(written: &str) -> Result<u16, PortError> {
    let bad = || PortError {
        written: written.chars().take(16).collect(),
    };
    if written.is_empty() || written.len() > 5 || !written.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match written.parse::<u16>() {
        Ok(0) | Err(_) => Err(bad()),
        Ok(port) => Ok(port),
    }
}

/// Splits an authority (`host:port`, `[v6]:port`, `host`) into the host as written and the
/// port: `None` when none is written or it is empty (RFC 3986 §3.2.3), an error when what is
/// written is not a port (never the default in its place).
pub fn split_authority(authority: &str) -> Result<(&str, Option<u16>), PortError> {
    let (host, port) = match authority.rfind(']') {
        Some(end) if authority.starts_with('[') => {
            let rest = &authority[end + 1..];
            (&authority[..=end], rest.strip_prefix(':'))
        }
        _ => match authority.rsplit_once(':') {
            // Two colons and no brackets: an IPv6 address without a port.
            Some((host, _)) if host.contains(':') => (authority, None),
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    match port {
        None | Some("") => Ok((host, None)),
        Some(written) => parse_port(written).map(|p| (host, Some(p))),
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
        }
    }
}

/// Folds IPv4-mapped IPv6 (`::ffff:a.b.c.d`) to IPv4.
pub fn normalize_ip(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

const fn net(addr: Ipv6Addr, len: u8) -> Ipv6Net {
    match Ipv6Net::new(addr, len) {
        Ok(net) => net,
        Err(_) => panic!("constant prefix"),
    }
}

/// RFC 6052 well-known NAT64 prefix.
const NAT64: Ipv6Net = net(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96);
/// RFC 8215 local-use NAT64 prefix.
const NAT64_LOCAL: Ipv6Net = net(Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48);
/// 6to4 (RFC 3056): the IPv4 address in bits 16..48.
const SIX_TO_FOUR: Ipv6Net = net(Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16);
/// Teredo (RFC 4380): a tunnel through whatever the embedded addresses are.
const TEREDO: Ipv6Net = net(Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 32);
/// IPv4-compatible (deprecated, RFC 4291 §2.5.5.1) and IPv4-translated (SIIT, RFC 2765).
const V4_COMPATIBLE: Ipv6Net = net(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 96);
const V4_TRANSLATED: Ipv6Net = net(Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, 0, 0), 96);

/// True for addresses that lead into a LAN or the host itself rather than to the internet:
/// loopback, private (RFC 1918, ULA), link-local, CGNAT, unspecified, multicast, broadcast and
/// documentation ranges. IPv6 forms that carry an IPv4 address (NAT64, local-use NAT64, 6to4)
/// are judged by the address they carry; the deprecated forms (IPv4-compatible,
/// IPv4-translated) and Teredo are refused outright.
pub fn is_internal(ip: IpAddr) -> bool {
    match normalize_ip(ip) {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let tail = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
            if NAT64.contains(&v6) {
                return is_internal_v4(tail);
            }
            if NAT64_LOCAL.contains(&v6) {
                // The prefix length inside the /48 is the site's choice (RFC 6052 §2.2):
                // /96 when bits 48..96 are zero, else any of the /48, /56, /64 layouts.
                if o[6..12].iter().all(|b| *b == 0) {
                    return is_internal_v4(tail);
                }
                return [
                    [o[6], o[7], o[9], o[10]],
                    [o[7], o[9], o[10], o[11]],
                    [o[9], o[10], o[11], o[12]],
                ]
                .into_iter()
                .any(|v4| is_internal_v4(Ipv4Addr::from(v4)));
            }
            if SIX_TO_FOUR.contains(&v6) {
                return is_internal_v4(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
            }
            if TEREDO.contains(&v6) || V4_COMPATIBLE.contains(&v6) || V4_TRANSLATED.contains(&v6) {
                return true;
            }
            let first = v6.segments()[0];
            v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link-local
                || (first & 0xffc0) == 0xfec0 // site-local (deprecated)
        }
    }
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let cgnat: IpNet = "100.64.0.0/10".parse().expect("constant CIDR");
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.octets()[0] == 0
        || ip.octets()[0] >= 240
        || cgnat.contains(&IpAddr::V4(ip))
}

fn looks_numeric(label: &str) -> bool {
    if label.is_empty() {
        return false;
    }
    if let Some(hex) = label
        .strip_prefix("0x")
        .or_else(|| label.strip_prefix("0X"))
    {
        return hex.bytes().all(|b| b.is_ascii_hexdigit());
    }
    label.bytes().all(|b| b.is_ascii_digit())
}

/// `inet_aton` rules: one to four parts, each decimal, octal (leading 0) or hex (0x); the
/// last part fills the remaining bytes.
fn parse_ipv4_loose(input: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = input.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut numbers = Vec::with_capacity(4);
    for part in &parts {
        numbers.push(parse_ipv4_part(part)?);
    }
    let (last, init) = numbers.split_last()?;
    if init.iter().any(|n| *n > 255) {
        return None;
    }
    let last_bits = 8 * (4 - init.len() as u32);
    if last_bits < 64 && *last >= 1u64 << last_bits {
        return None;
    }
    let mut value: u64 = 0;
    for (i, n) in init.iter().enumerate() {
        value |= n << (24 - 8 * i as u32);
    }
    value |= last;
    u32::try_from(value).ok().map(Ipv4Addr::from)
}

fn parse_ipv4_part(part: &str) -> Option<u64> {
    if part.is_empty() || part.len() > 12 {
        return None;
    }
    if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
        if hex.is_empty() {
            return Some(0);
        }
        return u64::from_str_radix(hex, 16).ok();
    }
    if part.len() > 1 && part.starts_with('0') {
        return u64::from_str_radix(&part[1..], 8).ok();
    }
    part.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_strict_port_grammar() {
        for good in ["1", "80", "65535", "08080"] {
            assert!(parse_port(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "0",
            "65536",
            "+80",
            "-1",
            " 80",
            "8o",
            "80 ",
            "99999999999",
            "0x50",
        ] {
            assert!(parse_port(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            split_authority("h.example:8080"),
            Ok(("h.example", Some(8080)))
        );
        assert_eq!(split_authority("h.example:"), Ok(("h.example", None)));
        assert_eq!(split_authority("h.example"), Ok(("h.example", None)));
        assert_eq!(
            split_authority("[2001:db8::1]:443"),
            Ok(("[2001:db8::1]", Some(443)))
        );
        assert_eq!(
            split_authority("[2001:db8::1]"),
            Ok(("[2001:db8::1]", None))
        );
        assert_eq!(split_authority("2001:db8::1"), Ok(("2001:db8::1", None)));
        assert!(split_authority("h.example:+80").is_err());
        assert!(split_authority("[::1]:0").is_err());
    }

    fn ip(s: &str) -> Host {
        Host::Ip(s.parse().unwrap())
    }

    #[test]
    fn names_are_lowercased_and_lose_the_trailing_dot() {
        assert_eq!(
            Host::parse("WWW.Esante-Centre.FR.").unwrap(),
            Host::Name("www.esante-centre.fr".into())
        );
        assert_eq!(
            Host::parse("localhost").unwrap(),
            Host::Name("localhost".into())
        );
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in [
            "",
            ".",
            "a..b",
            "user@host",
            "a b",
            "ex%61mple.com",
            "-",
            "a/b",
            "..",
        ] {
            assert!(Host::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(Host::parse(&"a".repeat(254)).is_err());
        assert!(Host::parse(&format!("{}.com", "a".repeat(64))).is_err());
    }

    #[test]
    fn ipv4_odd_spellings_are_normalised() {
        for spelling in [
            "127.0.0.1",
            "2130706433",
            "0x7f000001",
            "0x7f.0.0.1",
            "0177.0.0.1",
            "127.1",
            "127.0.1",
            "127.0.0.1.",
        ] {
            assert_eq!(
                Host::parse(spelling).unwrap(),
                ip("127.0.0.1"),
                "{spelling}"
            );
        }
        assert_eq!(Host::parse("164.138.243.29").unwrap(), ip("164.138.243.29"));
    }

    #[test]
    fn invalid_ipv4_is_an_error_not_a_name() {
        for bad in [
            "256.0.0.1",
            "1.2.3.4.5",
            "1.2.3.999",
            "4294967296",
            "08.0.0.1",
            "1.2.65536",
        ] {
            assert!(
                matches!(Host::parse(bad), Err(HostError::BadIpv4(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn ipv6_forms() {
        assert_eq!(Host::parse("[::1]").unwrap(), ip("::1"));
        assert_eq!(Host::parse("::1").unwrap(), ip("::1"));
        assert_eq!(Host::parse("[::ffff:127.0.0.1]").unwrap(), ip("127.0.0.1"));
        assert_eq!(Host::parse("[2001:DB8::1]").unwrap(), ip("2001:db8::1"));
        assert!(Host::parse("[::1").is_err());
        assert!(Host::parse("[fe80::1%eth0]").is_err());
        assert_eq!(Host::parse("[::1]").unwrap().to_string(), "[::1]");
    }

    #[test]
    fn internal_addresses() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.1.1",
            "0.0.0.0",
            "224.0.0.1",
            "100.64.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:10.0.0.1",
            "64:ff9b::7f00:1",
            "255.255.255.255",
            // Forms that embed 127.0.0.1 or 10.0.0.1, and deprecated ones.
            "64:ff9b:1::7f00:1",
            "64:ff9b:1:7f00:0:100::",
            "2002:7f00:1::1",
            "2002:a00:1::",
            "::7f00:1",
            "::a48a:f31d",
            "::ffff:0:7f00:1",
            "::ffff:0:a48a:f31d",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        ] {
            assert!(is_internal(internal.parse().unwrap()), "{internal}");
        }
        for public in [
            "164.138.243.29",
            "2a00:1450::1",
            "64:ff9b::a48a:f31d",
            "64:ff9b:1::a48a:f31d",
            "2002:a48a:f31d::1",
            "8.8.8.8",
        ] {
            assert!(!is_internal(public.parse().unwrap()), "{public}");
        }
    }
}
