//! The proxy-authentication state machine for one parent connection: which
//! `Proxy-Authorization` to send on each leg, given the parent's 407 challenges. Sans I/O:
//! the gateway sends the requests and feeds back what came back; Negotiate's tokens come from
//! a [`Negotiator`], whose calls may block (see [`Handshake::may_block`]).

use std::fmt;
use std::sync::Arc;

use crate::challenge::{describe, Challenge, Scheme};
use crate::credentials::{Credentials, Secret};
use crate::negotiate::{KerberosFailure, NegotiateError, Negotiator, SecurityContext};
use crate::ntlm::{self, NtlmError};

/// `auth` in an `[[upstream]]` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    None,
    Basic,
    Ntlm,
    /// Kerberos through SPNEGO.
    Negotiate,
    /// The strongest scheme the parent offers that the credentials allow: Negotiate, then
    /// NTLM, then Basic.
    Auto,
}

impl std::str::FromStr for AuthMode {
    type Err = String;
    fn from_str(s: &str) -> Result<AuthMode, String> {
        match s {
            "none" => Ok(AuthMode::None),
            "basic" => Ok(AuthMode::Basic),
            "ntlm" => Ok(AuthMode::Ntlm),
            "negotiate" => Ok(AuthMode::Negotiate),
            "auto" => Ok(AuthMode::Auto),
            other => Err(format!(
                "{other:?} is not an auth mode (none, basic, ntlm, negotiate, auto)"
            )),
        }
    }
}

impl fmt::Display for AuthMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthMode::None => "none",
            AuthMode::Basic => "basic",
            AuthMode::Ntlm => "ntlm",
            AuthMode::Negotiate => "negotiate",
            AuthMode::Auto => "auto",
        })
    }
}

/// Why a handshake could not go on. `code()` is the audit's reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the parent demands authentication ({offered}) but auth = \"none\" for it")]
    NotConfigured { offered: String },
    #[error("the parent offers {offered}; with these credentials Passerelle speaks {usable}")]
    Unsupported { offered: String, usable: String },
    #[error("auth = \"{wanted}\" but the parent offers {offered}")]
    SchemeNotOffered { wanted: AuthMode, offered: String },
    #[error("the parent answered the NTLM negotiation without a challenge")]
    NoChallenge,
    #[error(transparent)]
    Ntlm(#[from] NtlmError),
    #[error("parent refused the gateway's credentials (it offers {offered})")]
    Rejected { offered: String },
    #[error(transparent)]
    Kerberos(#[from] NegotiateError),
}

impl AuthError {
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
                | AuthError::Kerberos(_)
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
    negotiator: Option<Arc<dyn Negotiator>>,
    /// `negotiate_fallback = "ntlm"`: NTLM when Kerberos fails on our side.
    fallback_ntlm: bool,
    context: Option<Box<dyn SecurityContext>>,
    /// Kerberos already failed on our side on this connection: not tried twice.
    negotiate_failed: Option<NegotiateError>,
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
            negotiator: None,
            fallback_ntlm: false,
            context: None,
            negotiate_failed: None,
            state: State::Start,
            scheme: None,
            bound: false,
        }
    }

    /// Kerberos for Negotiate, and whether NTLM may stand in when it fails on our side.
    pub fn with_negotiator(
        mut self,
        negotiator: Option<Arc<dyn Negotiator>>,
        fallback_ntlm: bool,
    ) -> Self {
        self.negotiator = negotiator;
        self.fallback_ntlm = fallback_ntlm;
        self
    }

    /// Whether the next call may block (Negotiate may ask the KDC for tickets): then the
    /// caller runs it off its async runtime.
    pub fn may_block(&self) -> bool {
        self.negotiator.is_some()
    }

    /// The header for the first leg. `known` is the scheme this parent demanded before
    /// (credentials go only to a parent that has asked for them); `None` sends nothing.
    pub fn first_header(&mut self, known: Option<&Scheme>) -> Result<Option<String>, AuthError> {
        match known {
            Some(scheme) if self.mode != AuthMode::None => {
                match self.start(scheme.clone(), &[]) {
                    // Kerberos failed on our side; whether NTLM may stand in depends on what
                    // the parent offers: its 407 will say.
                    Err(AuthError::Kerberos(e)) if e.local() && self.fallback_ntlm => {
                        self.negotiate_failed = Some(e);
                        Ok(None)
                    }
                    other => other.map(Some),
                }
            }
            _ => Ok(None),
        }
    }

    /// The parent accepted: a final Negotiate token, when it sent one, is verified.
    pub fn finish(&mut self, challenges: &[Challenge]) -> Result<(), AuthError> {
        let Some(context) = self.context.as_mut() else {
            return Ok(());
        };
        let token = challenges
            .iter()
            .find(|c| c.scheme == Scheme::Negotiate)
            .and_then(|c| c.token.as_deref());
        if let Some(token) = token {
            let token = decode(token)?;
            context.step(&token)?;
        }
        Ok(())
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
                self.start(scheme, challenges)
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
            State::SentCredentials if self.scheme == Some(Scheme::Negotiate) => {
                // A continuation token asks for another leg on this connection; a bare
                // `Negotiate` is a refusal.
                let token = challenges
                    .iter()
                    .find(|c| c.scheme == Scheme::Negotiate)
                    .and_then(|c| c.token.as_deref());
                let (Some(token), Some(context)) = (token, self.context.as_mut()) else {
                    tracing::debug!(offered = %offered, leg = "negotiate", "parent.auth.rejected");
                    return Err(AuthError::Rejected { offered });
                };
                let token = decode(token)?;
                match context.step(&token)? {
                    Some(next) => {
                        self.bound = true;
                        Ok(format!("Negotiate {}", encode(&next)))
                    }
                    None => Err(AuthError::Rejected { offered }),
                }
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
            AuthMode::Negotiate => Scheme::Negotiate,
            AuthMode::Auto => {
                let usable = self.usable();
                return usable
                    .iter()
                    .find(|s| offered((*s).clone()))
                    .cloned()
                    .ok_or_else(|| AuthError::Unsupported {
                        offered: describe(challenges),
                        usable: usable
                            .iter()
                            .map(Scheme::to_string)
                            .collect::<Vec<_>>()
                            .join(", "),
                    });
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

    /// The schemes these credentials allow, strongest first.
    fn usable(&self) -> Vec<Scheme> {
        let mut schemes = Vec::new();
        if self.negotiator.is_some() {
            schemes.push(Scheme::Negotiate);
        }
        if let Some(creds) = &self.credentials {
            schemes.push(Scheme::Ntlm);
            if matches!(creds.secret(), Secret::Password(_)) {
                schemes.push(Scheme::Basic);
            }
        }
        schemes
    }

    fn start(&mut self, scheme: Scheme, challenges: &[Challenge]) -> Result<String, AuthError> {
        self.bound = false;
        if scheme == Scheme::Negotiate {
            let failed = match self.negotiate_failed.take() {
                Some(failed) => failed,
                None => {
                    let negotiator = self.negotiator.clone().ok_or(AuthError::NotConfigured {
                        offered: "Negotiate".to_string(),
                    })?;
                    match negotiator.begin() {
                        Ok((context, token)) => {
                            self.context = Some(context);
                            self.state = State::SentCredentials;
                            self.scheme = Some(Scheme::Negotiate);
                            return Ok(format!("Negotiate {}", encode(&token)));
                        }
                        Err(e) => e,
                    }
                }
            };
            let ntlm_offered = challenges.iter().any(|c| c.scheme == Scheme::Ntlm);
            if failed.local() && self.fallback_ntlm && ntlm_offered && self.credentials.is_some() {
                tracing::warn!(
                    error = %failed,
                    "parent.auth.negotiate.fallback: Kerberos failed on our side; NTLM instead, as negotiate_fallback = \"ntlm\" allows"
                );
                return self.start(Scheme::Ntlm, challenges);
            }
            return Err(failed.into());
        }
        let offered = scheme.to_string();
        let creds = self
            .credentials
            .as_deref()
            .ok_or(AuthError::NotConfigured { offered })?;
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

fn encode(token: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(token)
}

fn decode(token: &str) -> Result<Vec<u8>, AuthError> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .map_err(|_| {
            AuthError::Kerberos(NegotiateError {
                failure: KerberosFailure::BadToken,
                detail: "the parent's Negotiate token is not base64".to_string(),
            })
        })
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
        assert!(matches!(err, AuthError::Rejected { .. }));
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
            "the parent offers Negotiate, Digest; with these credentials Passerelle speaks NTLM, Basic"
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
        assert!(matches!(
            h.on_challenge(&parse_challenges(["NTLM"])).unwrap_err(),
            AuthError::NotConfigured { .. }
        ));
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

    /// A negotiator that answers from a script: what the real Kerberos gives is tested end to
    /// end against a KDC; here, the state machine around it.
    struct Scripted {
        begin: Result<Vec<u8>, NegotiateError>,
        continuation: Option<Vec<u8>>,
    }

    struct ScriptedContext(Option<Vec<u8>>);

    impl SecurityContext for ScriptedContext {
        fn step(&mut self, token: &[u8]) -> Result<Option<Vec<u8>>, NegotiateError> {
            if token == b"bad" {
                return Err(NegotiateError {
                    failure: KerberosFailure::BadToken,
                    detail: "bad".into(),
                });
            }
            Ok(self.0.take())
        }
    }

    impl Negotiator for Scripted {
        fn begin(&self) -> Result<(Box<dyn SecurityContext>, Vec<u8>), NegotiateError> {
            let token = self.begin.clone()?;
            Ok((Box::new(ScriptedContext(self.continuation.clone())), token))
        }
        fn spn(&self) -> &str {
            "HTTP@parent.test"
        }
    }

    fn kerberos(begin: Result<Vec<u8>, NegotiateError>) -> Option<Arc<dyn Negotiator>> {
        Some(Arc::new(Scripted {
            begin,
            continuation: Some(b"second".to_vec()),
        }))
    }

    fn local_failure() -> NegotiateError {
        NegotiateError {
            failure: KerberosFailure::KdcUnreachable,
            detail: "no KDC".into(),
        }
    }

    #[test]
    fn auto_prefers_negotiate_and_continues_on_the_same_connection() {
        let c = creds();
        let mut h = Handshake::new(AuthMode::Auto, c, ws())
            .with_negotiator(kerberos(Ok(b"first".to_vec())), false);
        assert!(h.may_block());
        let first = h
            .on_challenge(&parse_challenges([
                "NTLM",
                "Negotiate",
                "Basic realm=\"x\"",
            ]))
            .unwrap();
        assert_eq!(first, "Negotiate Zmlyc3Q=");
        assert_eq!(h.scheme(), Some(&Scheme::Negotiate));
        assert!(h.sent_credentials() && !h.awaits_challenge());
        let next = h
            .on_challenge(&parse_challenges(["Negotiate c2VydmVy"]))
            .unwrap();
        assert_eq!(next, "Negotiate c2Vjb25k");
        assert!(h.is_connection_bound());
        // A bare Negotiate after our token is a refusal.
        let err = h
            .on_challenge(&parse_challenges(["Negotiate"]))
            .unwrap_err();
        assert!(err.is_rejection(), "{err}");
    }

    #[test]
    fn a_final_token_is_verified_when_present_not_required() {
        let mut h = Handshake::new(AuthMode::Negotiate, None, ws())
            .with_negotiator(kerberos(Ok(b"t".to_vec())), false);
        h.first_header(Some(&Scheme::Negotiate)).unwrap().unwrap();
        h.finish(&[]).unwrap();
        h.finish(&parse_challenges(["Negotiate b2s="])).unwrap();
        let err = h.finish(&parse_challenges(["Negotiate YmFk"])).unwrap_err();
        assert!(matches!(
            err,
            AuthError::Kerberos(NegotiateError {
                failure: KerberosFailure::BadToken,
                ..
            })
        ));
    }

    #[test]
    fn kerberos_failures_keep_their_code_and_back_off() {
        let failure = NegotiateError {
            failure: KerberosFailure::PreauthFailed,
            detail: "Preauthentication failed".into(),
        };
        let mut h = Handshake::new(AuthMode::Negotiate, creds(), ws())
            .with_negotiator(kerberos(Err(failure)), true);
        let err = h
            .on_challenge(&parse_challenges(["Negotiate", "NTLM"]))
            .unwrap_err();
        assert!(matches!(
            err,
            AuthError::Kerberos(NegotiateError {
                failure: KerberosFailure::PreauthFailed,
                ..
            })
        ));
        assert!(err.backs_off());
        // Not a local failure: no NTLM fallback, whatever the setting (a wrong password
        // would fail there too, and count twice toward the lockout).
    }

    #[test]
    fn ntlm_stands_in_only_when_allowed_and_offered() {
        let mut h = Handshake::new(AuthMode::Negotiate, creds(), ws())
            .with_negotiator(kerberos(Err(local_failure())), false);
        let err = h
            .on_challenge(&parse_challenges(["Negotiate", "NTLM"]))
            .unwrap_err();
        assert!(matches!(
            err,
            AuthError::Kerberos(NegotiateError {
                failure: KerberosFailure::KdcUnreachable,
                ..
            })
        ));

        let mut h = Handshake::new(AuthMode::Negotiate, creds(), ws())
            .with_negotiator(kerberos(Err(local_failure())), true);
        let next = h
            .on_challenge(&parse_challenges(["Negotiate", "NTLM"]))
            .unwrap();
        assert!(next.starts_with("NTLM TlRMTVNTUAAB"), "{next}");
        assert_eq!(h.scheme(), Some(&Scheme::Ntlm));

        // Known to want Negotiate: the first leg goes without a header, and the 407's offer
        // decides, without asking the KDC twice.
        let mut h = Handshake::new(AuthMode::Negotiate, creds(), ws())
            .with_negotiator(kerberos(Err(local_failure())), true);
        assert_eq!(h.first_header(Some(&Scheme::Negotiate)).unwrap(), None);
        let next = h
            .on_challenge(&parse_challenges(["Negotiate", "NTLM"]))
            .unwrap();
        assert!(next.starts_with("NTLM "), "{next}");
    }

    #[test]
    fn auto_with_an_nt_hash_never_picks_basic() {
        let c = Some(Arc::new(
            Credentials::new(
                "CHU\\svc",
                None,
                Secret::parse_nt_hash("a4f49c406510bdcab6824ee7c30fd852").unwrap(),
            )
            .unwrap(),
        ));
        let mut h = Handshake::new(AuthMode::Auto, c, ws());
        let err = h
            .on_challenge(&parse_challenges(["Basic realm=\"x\""]))
            .unwrap_err();
        assert!(matches!(err, AuthError::Unsupported { .. }), "{err}");
    }
}
