//! Upstream proxy authentication, sans I/O: parsing the parent's challenges, Basic
//! (RFC 7617), NTLMv2 (MS-NLMP), Negotiate through a [`Negotiator`] (Kerberos lives in
//! `passerelle-kerberos`), and the credentials they use.
#![forbid(unsafe_code)]

pub mod challenge;
pub mod credentials;
pub mod handshake;
pub mod negotiate;
pub mod ntlm;

pub use challenge::{parse_challenges, Challenge, Scheme};
pub use credentials::{nt_hash, Credentials, CredentialsError, Secret};
pub use handshake::{AuthError, AuthMode, Handshake};
pub use negotiate::{KerberosFailure, NegotiateError, Negotiator, SecurityContext};
