//! The proxy-authentication state machine for one parent connection: which
//! `Proxy-Authorization` to send on each leg, given the parent's 407 challenges. Sans I/O:
//! the gateway sends the requests and feeds back what came back.

use std::fmt;
use std::sync::Arc;

use crate::challenge::{describe, Challenge, Scheme};
use crate::credentials::Credentials;
use crate::ntlm::{self, NtlmError};

/// `auth` in an `[[upstream]]` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    None,
    Basic,
    Ntlm,
    /// The strongest scheme the parent offers among those we speak: NTLM, then Basic.
    Auto,
}

impl AuthMode {
    pub fn parse(s: &str) -> Option<AuthMode> {
        match s {
            "none" => Some(AuthMode::None),
            "basic" => Some(AuthMode::Basic),
            "ntlm" => Some(AuthMode::Ntlm),
            "auto" => Some(AuthMode::Auto),
            _ => None,
        }
    }
}

impl fmt::Display for AuthMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthMode::None => "none",
            AuthMode::Basic => "basic",
            AuthMode::Ntlm => "ntlm",
            AuthMode::Auto => "auto",
        })
    }
}

/// Why a handshake could not go on. `code()` is the audit's reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the parent demands authentication ({offered}) but auth = \"none\" for it")]
    NotConfigured { offered: String },
    #[error("the parent offers {offered}; Passerelle speaks NTLM and Basic")]
    Unsupported { offered: String },
    #[error("auth = \"{wanted}\" but the parent offers {offered}")]
    SchemeNotOffered { wanted: AuthMode, offered: String },
    #[error("the parent answered the NTLM negotiation without a challenge")]
    NoChallenge,
    #[error(transparent)]
    Ntlm(#[from] NtlmError),
    #[error("parent refused the gateway's credentials (it offers {offered})")]
    Rejected { offered: String },
}

impl AuthError {
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Rejected { .. } => "parent_auth_failed",
            AuthError::NotConfigured { .. }
            | AuthError::Unsupported { .. }
            | AuthError::SchemeNotOffered { .. } => "parent_auth_unsupported",
            AuthError::NoChallenge | AuthError::Ntlm(_) => "parent_auth_protocol",
        }
    }

    /// Did the parent see and refuse our credentials (the case that can lock an account)?
    pub fn is_rejection(&self) -> bool {
        matches!(self, AuthError::Rejected { .. })
    }

    /// Should the parent be left alone for the back-off? When it refused our credentials,
    /// and when it offers nothing we can use (asking again on every request changes nothing).
    pub fn backs_off(&self) -> bool {
        matches!(
            self,
            AuthError::Rejected { .. }
                | AuthError::NotConfigured { .. }
                | AuthError::Unsupported { .. }
                | AuthError::SchemeNotOffered { .. }
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Start,
    SentNegotiate,
    SentCredentials,
}

/// One connection's handshake. Start it with [`Handshake::first_header`], then call
/// [`Handshake::on_challenge`] for every 407 until the parent answers something else.
pub struct Handshake {
    mode: AuthMode,
    credentials: Option<Arc<Credentials>>,
    workstation: Arc<str>,
    state: State,
    scheme: Option<Scheme>,
    /// The last header answered the parent's token on this connection (NTLM's Type 3).
    bound: bool,
}

impl Handshake {
    pub fn new(
        mode: AuthMode,
        credentials: Option<Arc<Credentials>>,
        workstation: Arc<str>,
    ) -> Self {
        Handshake {
            mode,
            credentials,
            workstation,
            state: State::Start,
            scheme: None,
            bound: false,
        }
    }

    /// The header for the first leg. `known` is the scheme this parent demanded before
    /// (credentials go only to a parent that has asked for them); `None` sends nothing.
    pub fn first_header(&mut self, known: Option<&Scheme>) -> Result<Option<String>, AuthError> {
        match known {
            Some(scheme) if self.mode != AuthMode::None => self.start(scheme.clone()).map(Some),
            _ => Ok(None),
        }
    }

    /// The scheme in use, once chosen: what the gateway remembers for the next connection.
    pub fn scheme(&self) -> Option<&Scheme> {
        self.scheme.as_ref()
    }

    /// True once credentials (Basic, or an NTLM Type 3) went on the wire.
    pub fn sent_credentials(&self) -> bool {
        self.state == State::SentCredentials
    }

    /// True when the last header opened a negotiation the parent answers with a challenge
    /// (NTLM's Type 1): that leg cannot succeed, so it carries no request body.
    pub fn awaits_challenge(&self) -> bool {
        self.state == State::SentNegotiate
    }

    /// True when the next leg continues this connection's negotiation: it answers a token
    /// the parent gave on this connection, so it cannot go on another one.
    pub fn is_connection_bound(&self) -> bool {
        self.bound
    }

    /// The header for the next leg after a 407 carrying `challenges`.
    pub fn on_challenge(&mut self, challenges: &[Challenge]) -> Result<String, AuthError> {
        let offered = describe(challenges);
        match self.state {
            State::Start => {
                let scheme = self.choose(challenges)?;
                tracing::debug!(offered = %offered, chosen = %scheme, "parent.auth.challenge");
                self.start(scheme)
            }
            State::SentNegotiate => {
                let token = challenges
                    .iter()
                    .find(|c| c.scheme == Scheme::Ntlm)
                    .and_then(|c| c.token.as_deref())
                    .ok_or(AuthError::NoChallenge)?;
                let type2 = ntlm::parse_challenge(token)?;
                tracing::debug!(
                    flags = format_args!("{:#010x}", type2.flags),
                    target_name = %type2.target_name,
                    netbios_domain = type2.netbios_domain.as_deref().unwrap_or(""),
                    target_info = !type2.target_info.is_empty(),
                    "parent.auth.ntlm.type2"
                );
                let creds = self
                    .credentials
                    .as_deref()
                    .ok_or(AuthError::NotConfigured { offered })?;
                self.state = State::SentCredentials;
                self.bound = true;
                Ok(format!(
                    "NTLM {}",
                    ntlm::authenticate(creds, &type2, &self.workstation)?
                ))
            }
            State::SentCredentials => {
                tracing::debug!(offered = %offered, leg = "credentials", "parent.auth.rejected");
                Err(AuthError::Rejected { offered })
            }
        }
    }

    fn choose(&self, challenges: &[Challenge]) -> Result<Scheme, AuthError> {
        let offered = |s: Scheme| challenges.iter().any(|c| c.scheme == s);
        let wanted = match self.mode {
            AuthMode::None => {
                return Err(AuthError::NotConfigured {
                    offered: describe(challenges),
                })
            }
            AuthMode::Ntlm => Scheme::Ntlm,
            AuthMode::Basic => Scheme::Basic,
            AuthMode::Auto => {
                return if offered(Scheme::Ntlm) {
                    Ok(Scheme::Ntlm)
                } else if offered(Scheme::Basic) {
                    Ok(Scheme::Basic)
                } else {
                    Err(AuthError::Unsupported {
                        offered: describe(challenges),
                    })
                }
            }
        };
        if offered(wanted.clone()) {
            Ok(wanted)
        } else {
            Err(AuthError::SchemeNotOffered {
                wanted: self.mode,
                offered: describe(challenges),
            })
        }
    }

    fn start(&mut self, scheme: Scheme) -> Result<String, AuthError> {
        let offered = scheme.to_string();
        let creds = self
            .credentials
            .as_deref()
            .ok_or(AuthError::NotConfigured { offered })?;
        self.bound = false;
        let header = match scheme {
            Scheme::Ntlm => {
                self.state = State::SentNegotiate;
                format!("NTLM {}", ntlm::negotiate()?)
            }
            _ => {
                self.state = State::SentCredentials;
                basic(creds)
            }
        };
        self.scheme = Some(scheme);
        Ok(header)
    }
}

/// RFC 7617: `Basic base64(user-id ":" password)`, UTF-8. The user-id carries the domain as
/// configured (`DOMAIN\user`), which is what Windows-backed Basic proxies expect.
fn basic(creds: &Credentials) -> String {
    use base64::Engine;
    let password = match creds.secret() {
        crate::Secret::Password(p) => p.as_str(),
        // An NT hash cannot answer Basic: send an empty password, which the parent refuses.
        crate::Secret::NtHash(_) => "",
    };
    let plain = zeroize::Zeroizing::new(format!("{}:{}", creds.account(), password));
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(plain.as_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::challenge::parse_challenges;
    use crate::Secret;

    fn creds() -> Option<Arc<Credentials>> {
        Some(Arc::new(
            Credentials::new("CHU\\svc", None, Secret::Password("pässwörd".into())).unwrap(),
        ))
    }

    fn ws() -> Arc<str> {
        Arc::from("W")
    }

    #[test]
    fn nothing_is_sent_before_a_407() {
        let c = creds();
        let mut h = Handshake::new(AuthMode::Ntlm, c.clone(), ws());
        assert_eq!(h.first_header(None).unwrap(), None);
        let next = h
            .on_challenge(&parse_challenges(["NTLM", "Basic realm=\"x\""]))
            .unwrap();
        assert!(next.starts_with("NTLM TlRMTVNTUAAB"), "{next}");
        assert!(!h.sent_credentials());
    }

    #[test]
    fn auto_prefers_ntlm_then_basic() {
        let c = creds();
        let mut h = Handshake::new(AuthMode::Auto, c.clone(), ws());
        assert!(h
            .on_challenge(&parse_challenges(["Basic realm=\"x\", NTLM"]))
            .unwrap()
            .starts_with("NTLM "));
        let mut h = Handshake::new(AuthMode::Auto, c.clone(), ws());
        let basic = h
            .on_challenge(&parse_challenges(["Basic realm=\"x\""]))
            .unwrap();
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(basic.strip_prefix("Basic ").unwrap())
            .unwrap();
        assert_eq!(String::from_utf8(decoded).unwrap(), "CHU\\svc:pässwörd");
        assert!(h.sent_credentials());
        let err = h
            .on_challenge(&parse_challenges(["Basic realm=\"x\""]))
            .unwrap_err();
        assert!(err.is_rejection());
        assert_eq!(err.code(), "parent_auth_failed");
        assert!(!err.to_string().contains("pässwörd"));
    }

    #[test]
    fn unsupported_schemes_are_named() {
        let c = creds();
        let mut h = Handshake::new(AuthMode::Auto, c.clone(), ws());
        let err = h
            .on_challenge(&parse_challenges([
                "Negotiate",
                "Digest realm=\"r\", nonce=\"n\"",
            ]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the parent offers Negotiate, Digest; Passerelle speaks NTLM and Basic"
        );
        let mut h = Handshake::new(AuthMode::Ntlm, c.clone(), ws());
        let err = h
            .on_challenge(&parse_challenges(["Basic realm=\"x\""]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "auth = \"ntlm\" but the parent offers Basic"
        );
        let mut h = Handshake::new(AuthMode::None, None, ws());
        assert_eq!(
            h.on_challenge(&parse_challenges(["NTLM"]))
                .unwrap_err()
                .code(),
            "parent_auth_unsupported"
        );
    }

    #[test]
    fn ntlm_without_a_type2_is_a_protocol_error() {
        let c = creds();
        let mut h = Handshake::new(AuthMode::Ntlm, c.clone(), ws());
        h.on_challenge(&parse_challenges(["NTLM"])).unwrap();
        assert_eq!(
            h.on_challenge(&parse_challenges(["NTLM"])).unwrap_err(),
            AuthError::NoChallenge
        );
    }

    #[test]
    fn a_known_scheme_starts_the_handshake_on_the_first_leg() {
        let c = creds();
        let mut h = Handshake::new(AuthMode::Auto, c.clone(), ws());
        let first = h.first_header(Some(&Scheme::Basic)).unwrap().unwrap();
        assert!(first.starts_with("Basic "));
        let mut h = Handshake::new(AuthMode::None, None, ws());
        assert_eq!(h.first_header(Some(&Scheme::Basic)).unwrap(), None);
    }
}
