//! Upstream proxy authentication, sans I/O: parsing the parent's challenges, Basic
//! (RFC 7617) and NTLMv2 (MS-NLMP), and the credentials they use.

pub mod challenge;
pub mod credentials;
pub mod handshake;
pub mod ntlm;

pub use challenge::{parse_challenges, Challenge, Scheme};
pub use credentials::{nt_hash, Credentials, CredentialsError, Secret};
pub use handshake::{AuthError, AuthMode, Handshake};
