//! Negotiate (RFC 4559, SPNEGO with Kerberos): the seam between the handshake, which stays
//! sans I/O, and a Kerberos implementation, whose calls may block on the KDC (the gateway
//! runs them off its async runtime).

/// A source of security contexts toward one parent.
pub trait Negotiator: Send + Sync {
    /// A new security context for one parent connection, and its first token.
    fn begin(&self) -> Result<(Box<dyn SecurityContext>, Vec<u8>), NegotiateError>;

    /// The parent's service name, for messages.
    fn spn(&self) -> &str;
}

/// One parent connection's context.
pub trait SecurityContext: Send {
    /// Feeds the parent's token (a continuation, or a final one to verify); the next token
    /// to send, if any.
    fn step(&mut self, token: &[u8]) -> Result<Option<Vec<u8>>, NegotiateError>;
}

/// Why Kerberos failed, told apart because each calls for a different fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KerberosFailure {
    /// The GSS-API library is not installed.
    Library,
    NoCredentials,
    KdcUnreachable,
    PrincipalUnknown,
    /// Pre-authentication failed: the password (or keytab key) is wrong. Counts toward the
    /// account's lockout threshold.
    PreauthFailed,
    /// The account is disabled, locked or expired at the KDC.
    AccountRevoked,
    ClockSkew,
    SpnUnknown,
    /// The parent's token did not verify.
    BadToken,
    Other,
}

impl KerberosFailure {
    /// A failure on our side that no exchange with the parent took part in, where NTLM (when
    /// allowed) might still work: not a wrong password, which would fail there too.
    pub fn is_local(self) -> bool {
        matches!(
            self,
            KerberosFailure::Library
                | KerberosFailure::NoCredentials
                | KerberosFailure::KdcUnreachable
                | KerberosFailure::SpnUnknown
                | KerberosFailure::ClockSkew
        )
    }
}

/// A Kerberos failure, as the handshake needs to know it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Kerberos, {detail}")]
pub struct NegotiateError {
    pub failure: KerberosFailure,
    /// Words for people: what was tried (principal, SPN, realm) and what the library said.
    pub detail: String,
}

impl NegotiateError {
    /// Failed on our side before the parent was involved: see [`KerberosFailure::is_local`].
    pub fn local(&self) -> bool {
        self.failure.is_local()
    }
}
