//! Header rules at the proxy's edge: hop-by-hop fields removed (RFC 9110 §7.6.1), `Via`
//! added (§7.6.3) and checked for our own token (loops), `Host` taken from the URI
//! (RFC 9112 §3.2.2).

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION,
    TE, TRAILER, UPGRADE, VIA,
};
use http::Version;

/// Removes `Connection`, every field it names, and the fields that are hop-by-hop by
/// definition. `Proxy-Authorization` is the client's credential for *this* hop: it is never
/// forwarded to anyone.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        // `Connection: host` must not let a client strip Host; it is set from the URI anyway.
        if name != HOST {
            headers.remove(name);
        }
    }
    for name in [
        CONNECTION,
        TE,
        TRAILER,
        UPGRADE,
        PROXY_AUTHORIZATION,
        PROXY_AUTHENTICATE,
    ] {
        headers.remove(name);
    }
    headers.remove("proxy-connection");
    headers.remove("keep-alive");
}

/// Appends `<version> <via>` to `Via`.
pub fn add_via(headers: &mut HeaderMap, version: Version, via: &str) {
    let protocol = match version {
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        _ => "1.1",
    };
    if let Ok(value) = HeaderValue::from_str(&format!("{protocol} {via}")) {
        headers.append(VIA, value);
    }
}

/// True when a `Via` entry's received-by is our own token: the request came back to us.
pub fn has_our_via(headers: &HeaderMap, via: &str) -> bool {
    headers
        .get_all(VIA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|entry| entry.split_whitespace().nth(1))
        .any(|received_by| received_by.eq_ignore_ascii_case(via))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn connection_and_what_it_names_go() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret, host"),
            ("x-secret", "1"),
            ("host", "a"),
            ("proxy-connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("proxy-authenticate", "Basic"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["host", "x-kept"]);
    }

    #[test]
    fn via_loops() {
        let mut h = map(&[("via", "1.1 squid, 1.0 other")]);
        assert!(!has_our_via(&h, "passerelle"));
        add_via(&mut h, Version::HTTP_11, "passerelle");
        assert!(has_our_via(&h, "Passerelle"));
    }
}
