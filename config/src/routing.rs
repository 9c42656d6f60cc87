//! `routing.direct` patterns: the NO_PROXY-like list of targets reached without the parent.
//! `<local>` has the WinINet meaning (single-label names), plus loopback and private addresses.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::host::{is_internal, Host};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirectPattern {
    /// `localhost`, `pacs.chu.local`: this name only (WinINet; not its subdomains).
    Exact(String),
    /// `.chu.local` or `*.chu.local`: any name below `chu.local`, not `chu.local` itself.
    Suffix(String),
    /// `127.0.0.1`, `::1`: this address only.
    Ip(IpAddr),
    /// `10.0.0.0/8`
    Net(IpNet),
    /// `<local>`: names without a dot, and loopback, private or link-local addresses.
    Local,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a direct pattern (use a host, .suffix, *.suffix, an IP, a CIDR or <local>)")]
pub struct PatternError(pub String);

impl DirectPattern {
    pub fn parse(input: &str) -> Result<DirectPattern, PatternError> {
        let err = || PatternError(input.to_string());
        let s = input.trim();
        if s.eq_ignore_ascii_case("<local>") {
            return Ok(DirectPattern::Local);
        }
        if s.contains('/') {
            return s.parse().map(DirectPattern::Net).map_err(|_| err());
        }
        if let Some(suffix) = s.strip_prefix("*.").or_else(|| s.strip_prefix('.')) {
            return match Host::parse(suffix) {
                Ok(Host::Name(name)) => Ok(DirectPattern::Suffix(name)),
                _ => Err(err()),
            };
        }
        match Host::parse(s) {
            Ok(Host::Name(name)) => Ok(DirectPattern::Exact(name)),
            Ok(Host::Ip(ip)) => Ok(DirectPattern::Ip(ip)),
            Err(_) => Err(err()),
        }
    }

    pub fn matches(&self, host: &Host) -> bool {
        match (self, host) {
            (DirectPattern::Exact(p), Host::Name(n)) => p == n,
            (DirectPattern::Suffix(p), Host::Name(n)) => {
                n.len() > p.len()
                    && n.ends_with(p.as_str())
                    && n.as_bytes()[n.len() - p.len() - 1] == b'.'
            }
            (DirectPattern::Ip(p), Host::Ip(ip)) => p == ip,
            (DirectPattern::Net(net), Host::Ip(ip)) => net.contains(ip),
            (DirectPattern::Local, Host::Name(n)) => !n.contains('.'),
            (DirectPattern::Local, Host::Ip(ip)) => is_internal(*ip),
            _ => false,
        }
    }
}

impl fmt::Display for DirectPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DirectPattern::Exact(n) => f.write_str(n),
            DirectPattern::Suffix(s) => write!(f, "*.{s}"),
            DirectPattern::Ip(ip) => write!(f, "{ip}"),
            DirectPattern::Net(net) => write!(f, "{net}"),
            DirectPattern::Local => f.write_str("<local>"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, host: &str) -> bool {
        DirectPattern::parse(pattern)
            .unwrap()
            .matches(&Host::parse(host).unwrap())
    }

    #[test]
    fn exact_names_and_addresses() {
        assert!(matches("localhost", "LOCALHOST"));
        assert!(
            !matches("localhost", "127.0.0.1"),
            "localhost does not imply 127.0.0.1"
        );
        assert!(matches("127.0.0.1", "127.0.0.1"));
        assert!(matches("127.0.0.1", "127.1"));
        assert!(!matches("127.0.0.1", "localhost"));
        assert!(matches("::1", "[::1]"));
        assert!(!matches("chu.local", "pacs.chu.local"));
    }

    #[test]
    fn suffixes() {
        for p in [".chu.local", "*.chu.local"] {
            assert!(matches(p, "pacs.chu.local"));
            assert!(matches(p, "a.b.chu.local"));
            assert!(!matches(p, "chu.local"));
            assert!(!matches(p, "evilchu.local"));
        }
    }

    #[test]
    fn cidrs() {
        assert!(matches("10.0.0.0/8", "10.20.30.40"));
        assert!(!matches("10.0.0.0/8", "11.0.0.1"));
        assert!(!matches("10.0.0.0/8", "ten.example"));
        assert!(matches("fd00::/8", "[fd12::1]"));
    }

    #[test]
    fn local_has_the_wininet_meaning_plus_internal_addresses() {
        assert!(matches("<local>", "intranet"));
        assert!(matches("<local>", "localhost"));
        assert!(!matches("<local>", "covotem.esante-centre.fr"));
        assert!(matches("<local>", "127.0.0.1"));
        assert!(matches("<local>", "192.168.1.10"));
        assert!(matches("<LOCAL>", "[::1]"));
        assert!(!matches("<local>", "164.138.243.158"));
    }

    #[test]
    fn bad_patterns() {
        for bad in ["", "*.", "10.0.0.0/33", "a b", "*.127.0.0.1", "<lan>"] {
            assert!(DirectPattern::parse(bad).is_err(), "{bad:?}");
        }
    }
}
