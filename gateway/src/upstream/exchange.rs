//! The parent's 407 loop as pure decisions: which leg a request goes on, when credentials are
//! being tested (one request at a time), whether the next leg can stay on the connection, what
//! an answer teaches of the parent, and what a refusal means (the destination, the credentials,
//! or a failure on our side). `parent.rs` does the I/O around them; each is unit-tested here.

use passerelle_auth::{AuthMode, KerberosFailure, Scheme};

use super::request::Leg;

/// What a parent asks of a request before forwarding it, as learnt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Demand {
    Unknown,
    Nothing,
    Scheme(Scheme),
}

/// The leg the next request goes on. A negotiation leg (NTLM's Type 1) cannot succeed: it
/// carries no body. A first contact with a parent whose scheme is unknown holds the body
/// behind `Expect: 100-continue`. Otherwise everything goes.
pub fn leg(
    awaits_challenge: bool,
    has_header: bool,
    mode: AuthMode,
    demand: &Demand,
    has_body: bool,
) -> Leg {
    if awaits_challenge {
        Leg::Negotiation
    } else if !has_header && mode != AuthMode::None && *demand == Demand::Unknown && has_body {
        Leg::FirstContact
    } else {
        Leg::Final
    }
}

/// Does this leg present the credentials to the parent (and, through it, to the domain)? Then
/// it needs the right to test them while they are unproven.
pub fn presents_credentials(has_header: bool, leg: Leg) -> bool {
    has_header && leg == Leg::Final
}

/// Kerberos tests the credentials at the KDC when it makes a token, before the parent sees it:
/// when the parent is known to want Negotiate, the first token is made behind the same right.
pub fn kdc_before_first_leg(may_block: bool, known: bool) -> bool {
    may_block && known
}

/// After a 407 that asks for another leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The next leg goes on this connection.
    SameConnection,
    /// On a new connection (this one closes, or is out of step).
    NewConnection,
    /// Some of the body went with the refused leg and cannot go again.
    BodyLost,
    /// The parent closed a connection whose next leg answers its own challenge.
    HandshakeCut,
}

/// Where the leg after a 407 goes. A leg that announced a body it did not send leaves the
/// connection out of step (a parent may stop reading after a 407 to a large body, as Squid does
/// over 64 KiB).
pub fn after_407(
    leg: Leg,
    has_body: bool,
    body_whole: bool,
    closing: bool,
    ready: bool,
    connection_bound: bool,
) -> Next {
    if !body_whole {
        return Next::BodyLost;
    }
    let in_step = leg == Leg::Negotiation || !has_body;
    match (closing || !in_step || !ready, connection_bound) {
        (false, _) => Next::SameConnection,
        (true, true) => Next::HandshakeCut,
        (true, false) => Next::NewConnection,
    }
}

/// What an answer other than 407 teaches of the parent: the scheme it accepted, or that it
/// asked for none. Nothing when no authentication was tried (a flow with `parent_auth = false`).
pub fn learnt(mode: AuthMode, scheme: Option<&Scheme>) -> Option<Demand> {
    match (mode, scheme) {
        (AuthMode::None, _) => None,
        (_, Some(scheme)) => Some(Demand::Scheme(scheme.clone())),
        (_, None) => Some(Demand::Nothing),
    }
}

/// A 407 after our credentials went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The parent accepted these credentials before and refuses this destination (Squid does
    /// with `http_access deny … <auth acl>`): that destination waits; the credentials do not.
    /// `may_have_counted`: NTLM and Basic credentials are checked at a domain controller on
    /// every handshake (it may also be a password the domain no longer takes); Kerberos
    /// tickets are not.
    Destination { may_have_counted: bool },
    /// The credentials are refused: they wait for a new secret or the back-off. `counts`: the
    /// domain controller checked them (NTLM, Basic).
    Credentials { counts: bool },
    /// The parent refuses our Kerberos tickets without ever having taken one (its own keytab,
    /// its SPN): the parent waits; the account was not at fault and nothing counted.
    Tickets,
}

/// What a 407 after our credentials means, from the scheme and whether these credentials
/// were accepted on this parent since their last refusal.
pub fn rejection(scheme: &Scheme, proven_here: bool) -> Rejection {
    match (scheme, proven_here) {
        (Scheme::Negotiate, true) => Rejection::Destination {
            may_have_counted: false,
        },
        (Scheme::Negotiate, false) => Rejection::Tickets,
        (_, true) => Rejection::Destination {
            may_have_counted: true,
        },
        (_, false) => Rejection::Credentials { counts: true },
    }
}

/// A Kerberos failure on our side of the parent (making the token): does it hold the secret
/// back, and may the domain have counted it as a bad password?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KerberosStanding {
    /// The KDC refused the account: wait for a new secret or the back-off.
    Hold { counts: bool },
    /// Not a refusal of the account (no KDC reached, a skewed clock, an unknown SPN, the
    /// library missing): the request fails, the next one tries again.
    Pass,
}

pub fn kerberos_standing(failure: KerberosFailure) -> KerberosStanding {
    match failure {
        KerberosFailure::PreauthFailed => KerberosStanding::Hold { counts: true },
        KerberosFailure::AccountRevoked | KerberosFailure::PrincipalUnknown => {
            KerberosStanding::Hold { counts: false }
        }
        KerberosFailure::Library
        | KerberosFailure::NoCredentials
        | KerberosFailure::KdcUnreachable
        | KerberosFailure::ClockSkew
        | KerberosFailure::SpnUnknown
        | KerberosFailure::BadToken
        | KerberosFailure::Other => KerberosStanding::Pass,
    }
}

/// A pooled, authenticated connection answered 407 (the parent forgot it): the request goes
/// again on another connection when its body is all still here, else nothing was delivered.
pub fn pooled_407(replayable: bool) -> bool {
    replayable
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leg_carries_a_body_only_when_it_can_succeed() {
        use AuthMode::{Negotiate, None as NoAuth, Ntlm};
        let ntlm = Demand::Scheme(Scheme::Ntlm);
        // (awaits challenge, header, mode, demand, body) → leg
        let cases = [
            (true, true, Ntlm, &ntlm, true, Leg::Negotiation),
            (true, true, Ntlm, &Demand::Unknown, false, Leg::Negotiation),
            (
                false,
                false,
                Ntlm,
                &Demand::Unknown,
                true,
                Leg::FirstContact,
            ),
            (false, false, Ntlm, &Demand::Unknown, false, Leg::Final),
            (false, false, NoAuth, &Demand::Unknown, true, Leg::Final),
            (false, false, Ntlm, &Demand::Nothing, true, Leg::Final),
            (false, true, Ntlm, &ntlm, true, Leg::Final),
            (false, true, Negotiate, &Demand::Unknown, true, Leg::Final),
        ];
        for (awaits, header, mode, demand, body, expected) in cases {
            assert_eq!(
                leg(awaits, header, mode, demand, body),
                expected,
                "{awaits} {header} {mode} {demand:?} {body}"
            );
        }
    }

    #[test]
    fn only_a_final_leg_with_credentials_tests_them() {
        assert!(presents_credentials(true, Leg::Final));
        assert!(!presents_credentials(true, Leg::Negotiation));
        assert!(!presents_credentials(false, Leg::Final));
        assert!(!presents_credentials(true, Leg::FirstContact));
        assert!(kdc_before_first_leg(true, true));
        assert!(
            !kdc_before_first_leg(true, false),
            "unknown: the 407 comes first"
        );
        assert!(!kdc_before_first_leg(false, true), "NTLM asks no KDC");
    }

    #[test]
    fn after_a_407_the_next_leg_goes_where_it_can() {
        use Next::*;
        // (leg, body, body whole, closing, ready, bound) → next
        let cases = [
            (
                Leg::Negotiation,
                true,
                true,
                false,
                true,
                false,
                SameConnection,
            ),
            (Leg::Final, false, true, false, true, true, SameConnection),
            (Leg::Final, false, true, true, true, false, NewConnection),
            (Leg::Final, false, true, false, false, false, NewConnection),
            (Leg::Negotiation, true, true, true, true, true, HandshakeCut),
            // A first contact's body was announced, not sent: out of step.
            (
                Leg::FirstContact,
                true,
                true,
                false,
                true,
                false,
                NewConnection,
            ),
            (
                Leg::FirstContact,
                true,
                true,
                false,
                true,
                true,
                HandshakeCut,
            ),
            (Leg::Final, true, false, false, true, false, BodyLost),
            (Leg::FirstContact, true, false, true, false, true, BodyLost),
        ];
        for (leg, body, whole, closing, ready, bound, expected) in cases {
            assert_eq!(
                after_407(leg, body, whole, closing, ready, bound),
                expected,
                "{leg:?} body {body} whole {whole} closing {closing} ready {ready} bound {bound}"
            );
        }
    }

    #[test]
    fn an_answer_teaches_the_scheme_or_that_none_is_needed() {
        assert_eq!(
            learnt(AuthMode::Auto, Some(&Scheme::Negotiate)),
            Some(Demand::Scheme(Scheme::Negotiate))
        );
        assert_eq!(learnt(AuthMode::Ntlm, None), Some(Demand::Nothing));
        assert_eq!(learnt(AuthMode::None, Some(&Scheme::Basic)), None);
    }

    #[test]
    fn a_refusal_after_credentials_is_told_apart_by_scheme_and_history() {
        use Rejection::*;
        assert_eq!(
            rejection(&Scheme::Ntlm, false),
            Credentials { counts: true },
            "never accepted here: the password"
        );
        assert_eq!(
            rejection(&Scheme::Basic, false),
            Credentials { counts: true }
        );
        assert_eq!(
            rejection(&Scheme::Ntlm, true),
            Destination {
                may_have_counted: true
            },
            "accepted before: this destination, but the DC saw it"
        );
        assert_eq!(
            rejection(&Scheme::Negotiate, true),
            Destination {
                may_have_counted: false
            }
        );
        assert_eq!(rejection(&Scheme::Negotiate, false), Tickets);
    }

    #[test]
    fn kerberos_failures_hold_only_what_the_kdc_refused() {
        use KerberosFailure::*;
        use KerberosStanding::*;
        let cases = [
            (PreauthFailed, Hold { counts: true }),
            (AccountRevoked, Hold { counts: false }),
            (PrincipalUnknown, Hold { counts: false }),
            (KdcUnreachable, Pass),
            (ClockSkew, Pass),
            (SpnUnknown, Pass),
            (NoCredentials, Pass),
            (Library, Pass),
            (BadToken, Pass),
            (Other, Pass),
        ];
        for (failure, expected) in cases {
            assert_eq!(kerberos_standing(failure), expected, "{failure:?}");
        }
    }

    #[test]
    fn a_pooled_407_replays_only_what_is_all_here() {
        assert!(pooled_407(true));
        assert!(!pooled_407(false));
    }
}
