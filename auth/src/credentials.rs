//! The gateway's own account at the parent proxy. The secret is zeroized on drop and never
//! shown by `Debug` or `Display`.

use std::fmt;
use std::path::Path;

use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// A password or its NT hash (MD4 of the UTF-16LE password, cntlm's `PassNT`).
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub enum Secret {
    Password(String),
    NtHash([u8; 16]),
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Password(_) => f.write_str("Password(<redacted>)"),
            Secret::NtHash(_) => f.write_str("NtHash(<redacted>)"),
        }
    }
}

impl Secret {
    /// The NT hash, the only form NTLMv2 needs.
    pub fn nt_hash(&self) -> Zeroizing<[u8; 16]> {
        match self {
            Secret::Password(p) => nt_hash(p),
            Secret::NtHash(h) => Zeroizing::new(*h),
        }
    }

    /// Reads a hex NT hash (32 hex digits, surrounding white space ignored).
    pub fn parse_nt_hash(text: &str) -> Result<Secret, CredentialsError> {
        let text = Zeroizing::new(text.trim().to_string());
        let mut hash = [0u8; 16];
        hex::decode_to_slice(text.as_bytes(), &mut hash)
            .map_err(|_| CredentialsError::BadNtHash)?;
        Ok(Secret::NtHash(hash))
    }

    /// Reads a secret file (systemd `LoadCredential`, Docker and Kubernetes secrets): the
    /// whole file, less one trailing newline.
    pub fn read_password_file(path: &Path) -> Result<Secret, CredentialsError> {
        let text = Zeroizing::new(read_secret_file(path)?);
        let password = text
            .strip_suffix("\r\n")
            .or_else(|| text.strip_suffix('\n'))
            .unwrap_or(&text);
        if password.is_empty() {
            return Err(CredentialsError::Empty(path.display().to_string()));
        }
        Ok(Secret::Password(password.to_string()))
    }

    pub fn read_nt_hash_file(path: &Path) -> Result<Secret, CredentialsError> {
        let text = Zeroizing::new(read_secret_file(path)?);
        Secret::parse_nt_hash(&text)
    }
}

fn read_secret_file(path: &Path) -> Result<String, CredentialsError> {
    std::fs::read_to_string(path).map_err(|e| CredentialsError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// NT hash of a password: MD4 over its UTF-16LE encoding (MS-NLMP 3.3.1, NTOWFv1).
pub fn nt_hash(password: &str) -> Zeroizing<[u8; 16]> {
    Zeroizing::new(ntlmclient::ntlm_v1_password_func(password))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    #[error("the NT hash must be 32 hexadecimal digits")]
    BadNtHash,
    #[error("cannot read the secret file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("the secret file {0} is empty")]
    Empty(String),
    #[error("the user name is empty")]
    EmptyUser,
    #[error("the user {user:?} names a domain, and so does the domain key ({domain:?}): give one")]
    TwoDomains { user: String, domain: String },
}

/// An account: user, NTLM domain (may be empty), secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub domain: String,
    secret: Secret,
}

impl Credentials {
    /// `user` may be `DOMAIN\user`, `user@domain` or a bare `user` (then `domain`, if any,
    /// is the NTLM domain).
    pub fn new(
        user: &str,
        domain: Option<&str>,
        secret: Secret,
    ) -> Result<Credentials, CredentialsError> {
        let (user_domain, name) = if let Some((d, u)) = user.split_once('\\') {
            (Some(d), u)
        } else if let Some((u, d)) = user.rsplit_once('@') {
            (Some(d), u)
        } else {
            (None, user)
        };
        if name.is_empty() {
            return Err(CredentialsError::EmptyUser);
        }
        let domain = match (user_domain, domain.filter(|d| !d.is_empty())) {
            (Some(a), Some(b)) if !a.eq_ignore_ascii_case(b) => {
                return Err(CredentialsError::TwoDomains {
                    user: user.to_string(),
                    domain: b.to_string(),
                })
            }
            (Some(d), _) | (None, Some(d)) => d.to_string(),
            (None, None) => String::new(),
        };
        Ok(Credentials {
            user: name.to_string(),
            domain,
            secret,
        })
    }

    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    /// `DOMAIN\user`, or `user` without a domain: how logs and the audit name the account.
    pub fn account(&self) -> String {
        if self.domain.is_empty() {
            self.user.clone()
        } else {
            format!("{}\\{}", self.domain, self.user)
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("domain", &self.domain)
            .field("secret", &self.secret)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pw(p: &str) -> Secret {
        Secret::Password(p.into())
    }

    #[test]
    fn user_forms() {
        let c = Credentials::new("CHU\\svc", None, pw("x")).unwrap();
        assert_eq!((c.user.as_str(), c.domain.as_str()), ("svc", "CHU"));
        let c = Credentials::new("svc@chu.local", None, pw("x")).unwrap();
        assert_eq!((c.user.as_str(), c.domain.as_str()), ("svc", "chu.local"));
        let c = Credentials::new("svc", Some("CHU"), pw("x")).unwrap();
        assert_eq!(c.account(), "CHU\\svc");
        let c = Credentials::new("svc", None, pw("x")).unwrap();
        assert_eq!(c.account(), "svc");
        assert!(Credentials::new("CHU\\", None, pw("x")).is_err());
        assert!(Credentials::new("A\\svc", Some("B"), pw("x")).is_err());
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let c = Credentials::new("CHU\\svc", None, pw("Sup3rS3cret!")).unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("Sup3rS3cret"), "{shown}");
        assert!(shown.contains("svc"));
        let h = Secret::parse_nt_hash("8846F7EAEE8FB117AD06BDD830B7586C").unwrap();
        let shown = format!("{h:?}");
        assert!(!shown.to_lowercase().contains("8846f7"), "{shown}");
    }

    #[test]
    fn nt_hash_of_a_known_password() {
        // MS-NLMP 4.2.4.1.1 test vector: NTOWFv1("Password").
        assert_eq!(
            hex::encode(*nt_hash("Password")),
            "a4f49c406510bdcab6824ee7c30fd852"
        );
        assert_eq!(
            *pw("Password").nt_hash(),
            *Secret::parse_nt_hash(" a4f49c406510bdcab6824ee7c30fd852\n")
                .unwrap()
                .nt_hash()
        );
        assert!(Secret::parse_nt_hash("xyz").is_err());
        assert!(Secret::parse_nt_hash("a4f49c406510bdcab6824ee7c30fd8").is_err());
    }
}
