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

/// A Kerberos failure, as the handshake needs to know it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Kerberos, {detail}")]
pub struct NegotiateError {
    /// The audit's stable reason (`kerberos_preauth_failed`…).
    pub code: &'static str,
    /// Words for people: what was tried (principal, SPN, realm) and what the library said.
    pub detail: String,
    /// Failed on our side before the parent was involved (no credentials, KDC unreachable,
    /// SPN unknown): NTLM may still work, where a fallback is allowed.
    pub local: bool,
}
