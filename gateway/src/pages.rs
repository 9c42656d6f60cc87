//! What a person at a workstation reads when the gateway answers instead of the site: an
//! HTML page when the client accepts `text/html` (plain text otherwise), in French or English
//! (`Accept-Language`, else `pages.language`), like Squid's translated error pages: what was
//! refused, why in words, the request id, the time (UTC), the workstation, whom to contact.
//! Self-contained: no external asset, no script; everything from the request is escaped.

use http::header::{HeaderValue, ACCEPT, ACCEPT_LANGUAGE};
use http::HeaderMap;

use crate::record::{Lang, Reason};

/// Who reads a page and how: the request in words, its id, the workstation, whom to contact,
/// the language and whether the client takes HTML.
pub struct Reader<'a> {
    /// `GET http://…` or `CONNECT host:port`.
    pub what: &'a str,
    pub id: &'a str,
    pub client: std::net::IpAddr,
    pub contact: &'a str,
    pub lang: Lang,
    pub html: bool,
}

/// A page: its reader, and the error it tells.
pub struct Page<'a> {
    pub reader: Reader<'a>,
    pub reason: Reason,
    /// The technical line (English, as in the audit's `detail`).
    pub detail: &'a str,
    /// Refused by policy (rather than failed).
    pub refused: bool,
}

/// The language and the shape the client asked for (`pages.language` when it names neither
/// French nor English).
pub fn negotiate(headers: &HeaderMap, pages: &passerelle_config::Pages) -> (Lang, bool) {
    let html = headers.get_all(ACCEPT).iter().any(|v| {
        v.as_bytes()
            .windows(9)
            .any(|w| w.eq_ignore_ascii_case(b"text/html"))
    });
    let default = match pages.language {
        passerelle_config::PageLanguage::Fr => Lang::Fr,
        passerelle_config::PageLanguage::En => Lang::En,
    };
    (language(headers, default), html)
}

/// The first of French and English in `Accept-Language`, by preference (`q`), else `default`.
fn language(headers: &HeaderMap, default: Lang) -> Lang {
    let mut best: Option<(f32, Lang)> = None;
    for item in headers
        .get_all(ACCEPT_LANGUAGE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let mut parts = item.split(';');
        let tag = parts.next().unwrap_or("").trim();
        let q = parts
            .find_map(|p| p.trim().strip_prefix("q="))
            .and_then(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        let primary = tag.split('-').next().unwrap_or("");
        let lang = if primary.eq_ignore_ascii_case("fr") {
            Lang::Fr
        } else if primary.eq_ignore_ascii_case("en") {
            Lang::En
        } else {
            continue;
        };
        if q > 0.0 && best.is_none_or(|(b, _)| q > b) {
            best = Some((q, lang));
        }
    }
    best.map_or(default, |(_, lang)| lang)
}

struct Words {
    refused: &'static str,
    failed: &'static str,
    intro_refused: &'static str,
    intro_failed: &'static str,
    request: &'static str,
    why: &'static str,
    id: &'static str,
    time: &'static str,
    workstation: &'static str,
    contact: &'static str,
    tell: &'static str,
    /// The same, for a failure: the destination is allowed, something on the way failed.
    tell_failed: &'static str,
}

const FR: Words = Words {
    refused: "Accès refusé",
    failed: "Accès impossible",
    intro_refused: "La passerelle de ce site n'a pas laissé passer cette demande : seuls les flux prévus pour Covotem (et ceux que le site a ajoutés) sont autorisés.",
    intro_failed: "La passerelle de ce site n'a pas pu joindre la destination.",
    request: "Demande",
    why: "Raison",
    id: "Identifiant",
    time: "Heure (UTC)",
    workstation: "Poste",
    contact: "Contact",
    tell: "Si cette destination est nécessaire, transmettez l'identifiant ci-dessus au service informatique : il retrouve la décision dans le journal d'audit.",
    tell_failed: "La destination est autorisée : si le problème persiste, transmettez l'identifiant ci-dessus au service informatique, qui retrouve dans le journal d'audit ce qui a échoué et où.",
};

const EN: Words = Words {
    refused: "Access refused",
    failed: "Cannot reach the site",
    intro_refused: "This site's gateway did not let this request through: only the flows planned for Covotem (and those the site added) are allowed.",
    intro_failed: "This site's gateway could not reach the destination.",
    request: "Request",
    why: "Reason",
    id: "Request id",
    time: "Time (UTC)",
    workstation: "Workstation",
    contact: "Contact",
    tell: "If this destination is needed, give the id above to your IT team: they find the decision in the audit log.",
    tell_failed: "The destination is allowed: if this goes on, give the id above to your IT team, who find in the audit log what failed and where.",
};

impl Page<'_> {
    /// The body, and its content type.
    pub fn render(&self, now: std::time::SystemTime) -> (String, HeaderValue) {
        let r = &self.reader;
        let w = match r.lang {
            Lang::Fr => &FR,
            Lang::En => &EN,
        };
        let time = humantime::format_rfc3339_seconds(now)
            .to_string()
            .replace('T', " ")
            .trim_end_matches('Z')
            .to_string();
        let title = if self.refused { w.refused } else { w.failed };
        let intro = if self.refused {
            w.intro_refused
        } else {
            w.intro_failed
        };
        let why = self.reason.words(r.lang);
        let tell = if self.refused { w.tell } else { w.tell_failed };
        if !r.html {
            // A sentence after a full stop starts with a capital.
            let mut sentence = why.chars();
            let why = sentence
                .next()
                .map(|c| c.to_uppercase().chain(sentence).collect::<String>())
                .unwrap_or_default();
            let mut text = format!(
                "passerelle: {}\n{title}. {why}.\n{}: {} · {}: {time} · {}: {}\n",
                self.detail, w.id, r.id, w.time, w.workstation, r.client
            );
            if !r.contact.is_empty() {
                text.push_str(&format!("{}: {}\n", w.contact, r.contact));
            }
            return (text, HeaderValue::from_static("text/plain; charset=utf-8"));
        }
        let lang = match r.lang {
            Lang::Fr => "fr",
            Lang::En => "en",
        };
        // The template escapes every value: the request's own text included.
        let body = maud::html! {
            (maud::DOCTYPE)
            html lang=(lang) {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " — Passerelle" }
                    style { (maud::PreEscaped(STYLE)) }
                }
                body { main {
                    h1 { (title) }
                    p { (intro) }
                    dl {
                        dt { (w.request) } dd { code { (r.what) } }
                        dt { (w.why) } dd { (why) " " small { "(" (self.reason.as_str()) ")" } }
                        dt { (w.id) } dd { code { (r.id) } }
                        dt { (w.time) } dd { (time) }
                        dt { (w.workstation) } dd { (r.client) }
                        @if !r.contact.is_empty() {
                            dt { (w.contact) } dd { (r.contact) }
                        }
                    }
                    p.tell { (tell) }
                    p.detail { (self.detail) }
                } }
            }
        }
        .into_string();
        (body, HeaderValue::from_static("text/html; charset=utf-8"))
    }
}

/// The page's only style: inline, since nothing outside the page is loaded.
const STYLE: &str = "body{font:16px/1.5 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2433}\
main{max-width:40rem;margin:3rem auto;padding:2rem;background:#fff;border-radius:8px;border-top:6px solid #b3261e}\
h1{margin-top:0;font-size:1.6rem}dl{display:grid;grid-template-columns:max-content 1fr;gap:.4rem 1rem}\
dt{font-weight:600}dd{margin:0;overflow-wrap:anywhere}code{font-size:.9em}.tell{margin-top:1.5rem}\
.detail{color:#5b6170;font-size:.85rem}";

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn the_language_follows_accept_language_preferences() {
        assert_eq!(language(&headers(&[]), Lang::Fr), Lang::Fr);
        assert_eq!(
            language(
                &headers(&[("accept-language", "en-GB,en;q=0.9,fr;q=0.8")]),
                Lang::Fr
            ),
            Lang::En
        );
        assert_eq!(
            language(
                &headers(&[("accept-language", "de-DE, fr;q=0.5, en;q=0.4")]),
                Lang::En
            ),
            Lang::Fr
        );
        assert_eq!(
            language(&headers(&[("accept-language", "de, es")]), Lang::En),
            Lang::En
        );
        assert_eq!(
            language(
                &headers(&[("accept-language", "fr;q=0, en;q=0.1")]),
                Lang::Fr
            ),
            Lang::En
        );
    }

    #[test]
    fn everything_from_the_request_is_escaped_and_nothing_is_loaded() {
        let page = Page {
            reader: Reader {
                what: "GET http://evil.example/<script>alert(1)</script>\"'&",
                id: "0a1b2c3d-7",
                client: "10.20.30.4".parse().unwrap(),
                contact: "Service informatique <poste 1234>",
                lang: Lang::Fr,
                html: true,
            },
            reason: Reason::NoFlow,
            detail: "GET http://evil.example/<script> refused: no allowed flow matches",
            refused: true,
        };
        let (body, kind) = page.render(std::time::SystemTime::UNIX_EPOCH);
        assert_eq!(kind, "text/html; charset=utf-8");
        assert!(!body.contains("<script>"), "{body}");
        assert!(
            body.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;'&amp;"),
            "{body}"
        );
        assert!(body.contains("Service informatique &lt;poste 1234&gt;"));
        assert!(body.contains("cette destination ne fait partie d'aucun flux autorisé"));
        assert!(body.contains("0a1b2c3d-7") && body.contains("1970-01-01 00:00:00"));
        for external in ["src=", "href=", "url(", "@import", "<script"] {
            assert!(!body.contains(external), "{external} in {body}");
        }
    }

    #[test]
    fn a_failure_is_not_told_as_a_refusal_and_sentences_start_with_a_capital() {
        let page = |refused: bool, reason: Reason, html: bool| {
            Page {
                reader: Reader {
                    what: "CONNECT covotem.esante-centre.fr:443",
                    id: "0a1b2c3d-8",
                    client: "10.20.30.4".parse().unwrap(),
                    contact: "",
                    lang: Lang::En,
                    html,
                },
                reason,
                detail: "the detail",
                refused,
            }
            .render(std::time::SystemTime::UNIX_EPOCH)
            .0
        };
        let failed = page(false, Reason::DnsFailed, true);
        assert!(failed.contains("The destination is allowed"), "{failed}");
        assert!(
            !failed.contains("If this destination is needed"),
            "{failed}"
        );
        let refused = page(true, Reason::NoFlow, true);
        assert!(
            refused.contains("If this destination is needed"),
            "{refused}"
        );
        let text = page(true, Reason::NoFlow, false);
        let second = text.lines().nth(1).unwrap();
        let after_stop = second.split(". ").nth(1).unwrap();
        assert!(after_stop.starts_with(char::is_uppercase), "{second}");
    }
}
