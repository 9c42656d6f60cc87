//! Kerberos for parent proxies that demand `Negotiate`: the gateway's credentials, one SPNEGO
//! security context per parent connection, and failures told apart (no credentials, KDC
//! unreachable, unknown principal, wrong password, clock skew, unknown SPN). Every call may
//! block on the KDC: run them off the async runtime. `unsafe` lives in `ffi` alone.
#![deny(unsafe_code)]

mod ffi;
mod initiator;
pub mod kdc;

pub use ffi::KeytabEntry;
pub use initiator::{enctype_name, live_caches, Context, Failure, Initiator, KrbError, Source};

/// Is MIT Kerberos there (its GSS-API and krb5 libraries)? (`doctor`, and a clear error.)
pub fn available() -> Result<(), String> {
    ffi::available()
}
