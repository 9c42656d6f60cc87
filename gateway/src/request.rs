//! A proxy request's own grammar: its target (CONNECT's authority, an absolute `http://` URI,
//! or, inside a CONNECT to a plain-HTTP port, that CONNECT's target), and the forms the next hop
//! expects (origin-form, absolute-form, the `Host` header, framing derived from the body).

use http::header::{HeaderValue, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{Method, Request, Uri};
use passerelle_config::host::split_authority;
use passerelle_config::{Host, Kind, Target};

use crate::error::GatewayError;

/// The target of a proxy request: CONNECT's authority, or an absolute `http://` URI; inside a
/// CONNECT to a plain-HTTP port, that CONNECT's target (origin-form requests, or absolute-form
/// ones naming that same target).
pub fn request_target<B>(
    req: &Request<B>,
    max_uri: u32,
    within: Option<&Target>,
) -> Result<Target, GatewayError> {
    let uri = req.uri();
    let length = uri.path_and_query().map_or(0, |pq| pq.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    if length > max_uri as usize {
        return Err(GatewayError::UriTooLong(max_uri));
    }
    if req.method() == Method::TRACE {
        return Err(GatewayError::MethodNotAllowed(Method::TRACE));
    }
    let kind = if req.method() == Method::CONNECT {
        if within.is_some() {
            return Err(GatewayError::BadRequest(
                "CONNECT inside a tunnel is refused".to_string(),
            ));
        }
        Kind::Connect
    } else {
        match (uri.scheme_str(), within) {
            (None, Some(within)) => return Ok(within.clone()),
            (None, None) => return Err(GatewayError::OriginForm),
            (Some("http"), _) => {}
            (Some("https"), None) => return Err(GatewayError::HttpsForward),
            (Some(other), _) => {
                return Err(GatewayError::BadRequest(format!(
                    "the {other}:// scheme is not proxied"
                )))
            }
        }
        Kind::Forward
    };
    let authority = uri
        .authority()
        .ok_or_else(|| GatewayError::BadRequest("the request has no host".to_string()))?;
    if authority.as_str().contains('@') {
        return Err(GatewayError::BadRequest(
            "URLs with user information are refused".to_string(),
        ));
    }
    let port = match (explicit_port(authority.as_str())?, kind) {
        (Some(port), _) => port,
        (None, Kind::Forward) => 80,
        (None, Kind::Connect) => {
            return Err(GatewayError::BadRequest(
                "CONNECT needs host:port".to_string(),
            ))
        }
    };
    let host =
        Host::parse(authority.host()).map_err(|e| GatewayError::BadRequest(e.to_string()))?;
    let target = Target { host, port, kind };
    match within {
        Some(within) if (&within.host, within.port) != (&target.host, target.port) => {
            Err(GatewayError::BadRequest(format!(
                "inside a CONNECT to {within}, requests go to {within} only, not {target}"
            )))
        }
        _ => Ok(target),
    }
}

/// The port written in an authority (`None` when none is), by the configuration's own grammar
/// (`passerelle_config::host::split_authority`): never the default in place of a bad one.
fn explicit_port(authority: &str) -> Result<Option<u16>, GatewayError> {
    split_authority(authority)
        .map(|(_, port)| port)
        .map_err(|e| GatewayError::BadRequest(format!("{e} (in {authority:.256})")))
}

pub fn scheme(target: &Target) -> &'static str {
    match target.kind {
        Kind::Connect => "connect",
        Kind::Forward => "http",
    }
}

/// The path for the audit: forward requests only, without the query string.
pub fn path<B>(req: &Request<B>) -> Option<&str> {
    (req.method() != Method::CONNECT).then(|| req.uri().path())
}

pub fn describe<B>(req: &Request<B>, target: &Target) -> String {
    match target.kind {
        Kind::Connect => format!("CONNECT {target}"),
        Kind::Forward => format!(
            "{} http://{}{}",
            req.method(),
            authority(target),
            req.uri().path()
        ),
    }
}

/// The next hop's framing is derived from the body hyper parsed, never copied from the
/// client's headers (no smuggling through odd `Content-Length`/`Transfer-Encoding`
/// combinations: with both, hyper reads the body by `Transfer-Encoding`, RFC 9112 §6.3,
/// and the origin sees only the framing we derive). Codings other than `chunked` are
/// refused rather than silently dropped.
pub fn reframe(headers: &mut http::HeaderMap) -> Result<(), GatewayError> {
    for value in headers.get_all(TRANSFER_ENCODING) {
        let codings = value.to_str().unwrap_or("?");
        if !codings.trim().eq_ignore_ascii_case("chunked") {
            return Err(GatewayError::TransferCoding(
                codings.chars().take(64).collect(),
            ));
        }
    }
    headers.remove(TRANSFER_ENCODING);
    headers.remove(CONTENT_LENGTH);
    Ok(())
}

/// `host`, or `host:port` when the port is not 80.
pub fn authority(target: &Target) -> String {
    if target.port == 80 {
        target.host.to_string()
    } else {
        target.to_string()
    }
}

pub fn host_header(target: &Target) -> HeaderValue {
    HeaderValue::from_str(&authority(target))
        .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

pub fn origin_form(uri: &Uri) -> Uri {
    let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
    pq.parse().unwrap_or_else(|_| Uri::from_static("/"))
}

pub fn absolute_form(uri: &Uri, target: &Target) -> Uri {
    let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let port = if target.port == 80 {
        String::new()
    } else {
        format!(":{}", target.port)
    };
    format!("http://{}{}{}", target.host, port, pq)
        .parse()
        .unwrap_or_else(|_| uri.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(method: &str, uri: &str) -> Result<Target, GatewayError> {
        let req = Request::builder().method(method).uri(uri).body(()).unwrap();
        request_target(&req, 8192, None)
    }

    #[test]
    fn absolute_form_and_connect_give_the_target() {
        let t = target("GET", "http://Covotem.Esante-Centre.FR./a?b").unwrap();
        assert_eq!(t.to_string(), "covotem.esante-centre.fr:80");
        assert_eq!(t.kind, Kind::Forward);
        let t = target("CONNECT", "covotem.esante-centre.fr:443").unwrap();
        assert_eq!((t.port, t.kind), (443, Kind::Connect));
        let t = target("GET", "http://[2001:db8::1]:8080/").unwrap();
        assert_eq!(t.to_string(), "[2001:db8::1]:8080");
        assert_eq!(
            target("GET", "http://h.example:/").unwrap().port,
            80,
            "an empty port is the default (RFC 3986 §3.2.3)"
        );
    }

    #[test]
    fn what_is_not_a_proxy_request_is_refused_with_its_reason() {
        assert!(matches!(
            target("GET", "/index.html"),
            Err(GatewayError::OriginForm)
        ));
        assert!(matches!(
            target("GET", "https://h.example/"),
            Err(GatewayError::HttpsForward)
        ));
        assert!(matches!(
            target("TRACE", "http://h.example/"),
            Err(GatewayError::MethodNotAllowed(_))
        ));
        for (method, uri, words) in [
            ("GET", "ftp://h.example/", "ftp:// scheme"),
            ("GET", "http://user:pw@h.example/", "user information"),
            ("CONNECT", "h.example", "host:port"),
            ("CONNECT", "h.example:0", "not a port"),
            ("CONNECT", "h.example:65536", "not a port"),
            ("GET", "http://h.example:8o/", "not a port"),
            ("GET", "http://h.example:+80/", "not a port"),
        ] {
            match target(method, uri) {
                Err(GatewayError::BadRequest(why)) => assert!(why.contains(words), "{uri}: {why}"),
                other => panic!("{uri}: {other:?}"),
            }
        }
        let long = format!("http://h.example/{}", "a".repeat(9000));
        assert!(matches!(
            target("GET", &long),
            Err(GatewayError::UriTooLong(8192))
        ));
    }

    #[test]
    fn inside_a_tunnel_requests_go_to_its_target_only() {
        let within = target("CONNECT", "h.example:8080").unwrap();
        let inside = |uri: &str, method: &str| {
            let req = Request::builder().method(method).uri(uri).body(()).unwrap();
            request_target(&req, 8192, Some(&within))
        };
        assert_eq!(inside("/a", "GET").unwrap(), within);
        assert_eq!(
            inside("http://h.example:8080/a", "GET")
                .unwrap()
                .to_string(),
            "h.example:8080"
        );
        assert!(matches!(
            inside("http://other.example:8080/", "GET"),
            Err(GatewayError::BadRequest(_))
        ));
        assert!(matches!(
            inside("h.example:8080", "CONNECT"),
            Err(GatewayError::BadRequest(_))
        ));
    }

    #[test]
    fn the_next_hop_gets_the_form_it_expects() {
        let t = target("GET", "http://h.example:8080/p?q=1").unwrap();
        let uri: Uri = "http://h.example:8080/p?q=1".parse().unwrap();
        assert_eq!(origin_form(&uri), "/p?q=1");
        assert_eq!(absolute_form(&uri, &t), "http://h.example:8080/p?q=1");
        let t80 = target("GET", "http://h.example/").unwrap();
        assert_eq!(authority(&t80), "h.example");
        assert_eq!(
            absolute_form(&"http://h.example/".parse().unwrap(), &t80),
            "http://h.example/"
        );
    }

    #[test]
    fn framing_is_derived_and_unknown_codings_refused() {
        let mut h = http::HeaderMap::new();
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("5"));
        h.append(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        reframe(&mut h).unwrap();
        assert!(h.is_empty());
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("gzip, chunked"));
        assert!(matches!(
            reframe(&mut h),
            Err(GatewayError::TransferCoding(_))
        ));
    }
}
