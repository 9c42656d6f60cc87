//! The audit's one vocabulary of reasons: why a request was refused or how it failed or
//! ended. Every layer's typed error maps here; the refusal pages say each in French and
//! English; the README's list is kept equal to it by a test.

use std::fmt;

use passerelle_auth::{AuthError, KerberosFailure};
use passerelle_config::DenyReason;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The languages of the refusal pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Fr,
    En,
}

macro_rules! reasons {
    ($( $(#[$doc:meta])* $variant:ident = $code:literal, $fr:literal, $en:literal; )*) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Reason {
            $( $(#[$doc])* $variant, )*
            /// A reason this version does not know (read from an older or newer log).
            Other,
        }

        impl Reason {
            /// Every reason a record can carry, in the README's order.
            pub const ALL: &'static [Reason] = &[$( Reason::$variant, )*];

            /// The stable code (`no_flow`).
            pub fn as_str(self) -> &'static str {
                match self {
                    $( Reason::$variant => $code, )*
                    Reason::Other => "other",
                }
            }

            /// The reason in words, for a person at a workstation.
            pub fn words(self, lang: Lang) -> &'static str {
                match (self, lang) {
                    $(
                        (Reason::$variant, Lang::Fr) => $fr,
                        (Reason::$variant, Lang::En) => $en,
                    )*
                    (Reason::Other, Lang::Fr) => "la demande n'a pas abouti",
                    (Reason::Other, Lang::En) => "the request did not go through",
                }
            }

            pub fn parse(code: &str) -> Reason {
                match code {
                    $( $code => Reason::$variant, )*
                    _ => Reason::Other,
                }
            }
        }
    };
}

reasons! {
    // Policy.
    ClientNotAllowed = "client_not_allowed", "ce poste n'est pas autorisé à utiliser la passerelle", "this workstation may not use the gateway";
    NoFlow = "no_flow", "cette destination ne fait partie d'aucun flux autorisé", "this destination is in no allowed flow";
    PortNotOpen = "port_not_open", "ce port n'est pas ouvert pour cette destination", "this port is not open for this destination";
    FlowDisabled = "flow_disabled", "ce flux appartient à un environnement (préproduction ou production) qui n'est pas activé ici", "this flow belongs to an environment (preprod or production) that is not enabled here";
    InternalAddress = "internal_address", "ce nom mène à une adresse du réseau interne, ce que ce flux n'autorise pas", "this name leads to an internal address, which this flow does not allow";
    // The TLS check of a tunnel.
    SniMismatch = "sni_mismatch", "la connexion chiffrée annonce un autre serveur que celui demandé", "the encrypted connection names another server than the one asked for";
    NoSni = "no_sni", "la connexion chiffrée n'annonce aucun nom de serveur", "the encrypted connection names no server";
    NotTls = "not_tls", "ce port attend une connexion chiffrée (TLS), et ce n'en est pas une", "this port expects an encrypted (TLS) connection, and this is not one";
    SniTimeout = "sni_timeout", "la connexion chiffrée n'a pas commencé à temps", "the encrypted connection did not start in time";
    // Limits.
    RateLimited = "rate_limited", "trop de demandes de ce poste en peu de temps : réessayez dans un instant", "too many requests from this workstation: try again in a moment";
    TooManyConnections = "too_many_connections", "la passerelle a atteint son nombre maximal de connexions", "the gateway is at its connection limit";
    ClientConnectionLimit = "client_connection_limit", "ce poste a trop de connexions ouvertes", "this workstation has too many open connections";
    HeaderTooLarge = "header_too_large", "l'en-tête de la demande est trop grand", "the request head is too large";
    UriTooLong = "uri_too_long", "l'adresse demandée est trop longue", "the address asked for is too long";
    HeaderTimeout = "header_timeout", "la demande n'est pas arrivée à temps", "the request did not arrive in time";
    ProxyProtocol = "proxy_protocol", "la connexion de l'équilibreur de charge n'a pas annoncé le poste d'origine (en-tête PROXY)", "the load balancer's connection did not name the workstation (PROXY header)";
    ReloadUnconfirmed = "reload_unconfirmed", "un rechargement doit être confirmé par l'en-tête X-Passerelle-Reload", "a reload must be confirmed by the X-Passerelle-Reload header";
    // Requests the gateway does not take.
    OriginForm = "origin_form", "la passerelle est un proxy : configurez-la comme proxy du poste", "the gateway is a proxy: set it as the workstation's proxy";
    HttpsForward = "https_forward", "les adresses https:// passent par CONNECT : indiquez aussi la passerelle comme proxy HTTPS", "https:// addresses go through CONNECT: set the gateway as the HTTPS proxy too";
    MethodNotAllowed = "method_not_allowed", "cette méthode HTTP n'est pas relayée", "this HTTP method is not relayed";
    BadRequest = "bad_request", "la demande est mal formée", "the request is malformed";
    MalformedRequest = "malformed_request", "la demande est mal formée", "the request is malformed";
    TransferCoding = "transfer_coding", "cet encodage de transfert n'est pas pris en charge", "this transfer coding is not supported";
    ClientBodyError = "client_body_error", "le corps de la demande est mal formé", "the request body is malformed";
    Loop = "loop", "la demande est revenue à la passerelle : boucle de proxys", "the request came back to the gateway: a proxy loop";
    ConfigInvalid = "config_invalid", "la configuration proposée n'est pas valide ; l'ancienne reste en place", "the new configuration is not valid; the old one stays";
    // The next hop.
    DnsFailed = "dns_failed", "le nom de la destination ne se résout pas", "the destination's name does not resolve";
    ConnectTimeout = "connect_timeout", "la destination n'a pas répondu à temps", "the destination did not answer in time";
    ConnectFailed = "connect_failed", "la destination refuse la connexion", "the destination refuses the connection";
    TlsFailed = "tls_failed", "la connexion chiffrée au proxy de l'établissement a échoué", "the encrypted connection to the site's proxy failed";
    UpstreamProtocol = "upstream_protocol", "l'échange avec le serveur a été interrompu", "the exchange with the server broke off";
    ResponseTimeout = "response_timeout", "le serveur n'a pas répondu à temps", "the server did not answer in time";
    OriginBodyError = "origin_body_error", "la réponse du serveur a été interrompue", "the server's answer broke off";
    ParentUnreachable = "parent_unreachable", "le proxy de l'établissement est injoignable", "the site's proxy cannot be reached";
    ParentAuthFailed = "parent_auth_failed", "le proxy de l'établissement refuse le compte de la passerelle", "the site's proxy refuses the gateway's account";
    ParentAuthUnsupported = "parent_auth_unsupported", "le proxy de l'établissement demande une authentification que la passerelle n'est pas configurée pour faire", "the site's proxy asks for an authentication the gateway is not set up for";
    ParentAuthProtocol = "parent_auth_protocol", "l'authentification auprès du proxy de l'établissement a échoué", "authentication with the site's proxy failed";
    ParentProtocol = "parent_protocol", "le proxy de l'établissement a interrompu l'échange", "the site's proxy broke off the exchange";
    AccountRefused = "account_refused", "le compte de la passerelle a été refusé par le domaine : rien n'est présenté avant que son secret change ou la prochaine tentative", "the domain refused the gateway's account: nothing is presented until its secret changes or the next attempt";
    ParentRefused = "parent_refused", "le proxy de l'établissement refuse cette destination", "the site's proxy refuses this destination";
    // Kerberos toward the site's proxy.
    KerberosUnavailable = "kerberos_unavailable", "Kerberos n'est pas installé sur la passerelle", "Kerberos is not installed on the gateway";
    KerberosNoCredentials = "kerberos_no_credentials", "la passerelle n'a pas d'identifiants Kerberos", "the gateway has no Kerberos credentials";
    KerberosKdcUnreachable = "kerberos_kdc_unreachable", "le contrôleur de domaine (KDC) est injoignable", "the domain controller (KDC) cannot be reached";
    KerberosPrincipalUnknown = "kerberos_principal_unknown", "le compte de la passerelle est inconnu du domaine", "the domain does not know the gateway's account";
    KerberosPreauthFailed = "kerberos_preauth_failed", "le mot de passe (ou le keytab) du compte de la passerelle est refusé", "the gateway account's password (or keytab) is refused";
    KerberosAccountRevoked = "kerberos_account_revoked", "le compte de la passerelle est désactivé, verrouillé ou expiré", "the gateway's account is disabled, locked or expired";
    KerberosClockSkew = "kerberos_clock_skew", "l'horloge de la passerelle n'est pas à l'heure", "the gateway's clock is off";
    KerberosSpnUnknown = "kerberos_spn_unknown", "le proxy de l'établissement n'est pas enregistré dans le domaine (SPN)", "the site's proxy is not registered in the domain (SPN)";
    KerberosBadToken = "kerberos_bad_token", "la réponse Kerberos du proxy de l'établissement n'est pas valide", "the site's proxy's Kerberos answer is not valid";
    KerberosFailed = "kerberos_failed", "l'authentification Kerberos a échoué", "Kerberos authentication failed";
    // How tunnels and answers end.
    IdleTimeout = "idle_timeout", "la connexion est restée inactive trop longtemps", "the connection stayed idle too long";
    Shutdown = "shutdown", "la passerelle s'est arrêtée", "the gateway stopped";
    Aborted = "aborted", "le poste a abandonné la demande", "the workstation gave up the request";
    ClientGone = "client_gone", "le poste a fermé la connexion", "the workstation closed the connection";
    RelayError = "relay_error", "la connexion a été interrompue", "the connection broke off";
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Reason {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Reason, D::Error> {
        let code = std::borrow::Cow::<str>::deserialize(d)?;
        Ok(Reason::parse(&code))
    }
}

impl From<&DenyReason> for Reason {
    fn from(r: &DenyReason) -> Reason {
        match r {
            DenyReason::ClientNotAllowed { .. } => Reason::ClientNotAllowed,
            DenyReason::NoFlow => Reason::NoFlow,
            DenyReason::PortNotOpen { .. } => Reason::PortNotOpen,
            DenyReason::FlowDisabled { .. } => Reason::FlowDisabled,
        }
    }
}

impl From<&AuthError> for Reason {
    fn from(e: &AuthError) -> Reason {
        match e {
            AuthError::Rejected { .. } => Reason::ParentAuthFailed,
            AuthError::NotConfigured { .. }
            | AuthError::Unsupported { .. }
            | AuthError::SchemeNotOffered { .. } => Reason::ParentAuthUnsupported,
            AuthError::NoChallenge | AuthError::Ntlm(_) => Reason::ParentAuthProtocol,
            AuthError::Kerberos(e) => match e.failure {
                KerberosFailure::Library => Reason::KerberosUnavailable,
                KerberosFailure::NoCredentials => Reason::KerberosNoCredentials,
                KerberosFailure::KdcUnreachable => Reason::KerberosKdcUnreachable,
                KerberosFailure::PrincipalUnknown => Reason::KerberosPrincipalUnknown,
                KerberosFailure::PreauthFailed => Reason::KerberosPreauthFailed,
                KerberosFailure::AccountRevoked => Reason::KerberosAccountRevoked,
                KerberosFailure::ClockSkew => Reason::KerberosClockSkew,
                KerberosFailure::SpnUnknown => Reason::KerberosSpnUnknown,
                KerberosFailure::BadToken => Reason::KerberosBadToken,
                KerberosFailure::Other => Reason::KerberosFailed,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_read_back() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            assert!(seen.insert(r.as_str()), "{r} twice");
            assert_eq!(Reason::parse(r.as_str()), *r);
            assert!(!r.words(Lang::Fr).is_empty() && !r.words(Lang::En).is_empty());
            let json = serde_json::to_string(r).unwrap();
            assert_eq!(serde_json::from_str::<Reason>(&json).unwrap(), *r);
        }
        assert_eq!(Reason::parse("from the future"), Reason::Other);
    }

    #[test]
    fn the_readme_lists_every_reason_and_no_other() {
        let readme = include_str!("../../../docs/security.md");
        let section = readme
            .split("<!-- reasons -->")
            .nth(1)
            .expect("the security guide marks its reason list with <!-- reasons -->");
        let listed: std::collections::BTreeSet<&str> = section
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|code| code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
            .collect();
        let known: std::collections::BTreeSet<&str> =
            Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(listed, known, "docs/security.md reasons vs the Reason enum");
    }
}
