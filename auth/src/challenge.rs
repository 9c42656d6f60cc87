//! `Proxy-Authenticate` parsing (RFC 9110 §11.6.1): the schemes a parent offers, with the
//! token that follows NTLM's second leg.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scheme {
    Basic,
    Ntlm,
    Negotiate,
    Digest,
    Other(String),
}

impl Scheme {
    fn from_name(name: &str) -> Scheme {
        match name.to_ascii_lowercase().as_str() {
            "basic" => Scheme::Basic,
            "ntlm" => Scheme::Ntlm,
            "negotiate" => Scheme::Negotiate,
            "digest" => Scheme::Digest,
            _ => Scheme::Other(name.to_string()),
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scheme::Basic => f.write_str("Basic"),
            Scheme::Ntlm => f.write_str("NTLM"),
            Scheme::Negotiate => f.write_str("Negotiate"),
            Scheme::Digest => f.write_str("Digest"),
            Scheme::Other(s) => f.write_str(s),
        }
    }
}

/// One challenge: its scheme and, for NTLM's Type 2, the base64 token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: Scheme,
    pub token: Option<String>,
}

/// Every challenge in a list of `Proxy-Authenticate` values. A value may hold several
/// challenges separated by commas (`Basic realm="a, b", NTLM`); quoted strings are respected.
pub fn parse_challenges<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<Challenge> {
    let mut out = Vec::new();
    for value in values {
        for item in split_outside_quotes(value) {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let (first, rest) = match item.split_once(char::is_whitespace) {
                Some((f, r)) => (f, r.trim()),
                None => (item, ""),
            };
            // `realm="x"` continues the previous challenge's parameters.
            if first.contains('=') && !out.is_empty() {
                continue;
            }
            let token = (!rest.is_empty() && !rest.contains('=') || is_token68(rest))
                .then(|| rest.to_string())
                .filter(|t| !t.is_empty());
            out.push(Challenge {
                scheme: Scheme::from_name(first),
                token,
            });
        }
    }
    out
}

/// A token68 (base64 and friends) may end in `=` padding; a parameter has a name before `=`.
fn is_token68(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

fn split_outside_quotes(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut in_quotes = false;
    let mut escaped = false;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            ',' if !in_quotes => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// The offered schemes for messages: `NTLM, Basic`.
pub fn describe(challenges: &[Challenge]) -> String {
    if challenges.is_empty() {
        return "no scheme".to_string();
    }
    let names: Vec<String> = challenges.iter().map(|c| c.scheme.to_string()).collect();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_headers_and_several_challenges_per_header() {
        let c = parse_challenges(["NTLM", "Basic realm=\"Squid, proxy\", Negotiate"]);
        let schemes: Vec<Scheme> = c.iter().map(|c| c.scheme.clone()).collect();
        assert_eq!(
            schemes,
            vec![Scheme::Ntlm, Scheme::Basic, Scheme::Negotiate]
        );
        assert!(c.iter().all(|c| c.token.is_none()), "{c:?}");
    }

    #[test]
    fn ntlm_type2_token() {
        let c = parse_challenges(["ntlm TlRMTVNTUAACAAAAAAAAAA=="]);
        assert_eq!(c[0].scheme, Scheme::Ntlm);
        assert_eq!(c[0].token.as_deref(), Some("TlRMTVNTUAACAAAAAAAAAA=="));
    }

    #[test]
    fn digest_parameters_are_not_challenges() {
        let c = parse_challenges(["Digest realm=\"x\", nonce=\"abc\", qop=\"auth\""]);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, Scheme::Digest);
        assert_eq!(describe(&c), "Digest");
        assert_eq!(describe(&[]), "no scheme");
    }
}
