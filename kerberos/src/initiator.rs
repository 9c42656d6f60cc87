//! The gateway's Kerberos identity toward one parent: its credentials (a client keytab, a
//! password, or the process's credential cache), obtained by one AS exchange of ours into one
//! memory cache per initiator (refreshed before it expires, destroyed with the initiator), and
//! one SPNEGO security context per parent connection, asking the parent to prove itself.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use crate::ffi::{self, GssStatus};
pub use passerelle_auth::KerberosFailure as Failure;

/// Where the gateway's Kerberos credentials come from, in the order of preference.
#[derive(Clone, PartialEq, Eq)]
pub enum Source {
    /// A client keytab: the TGT obtained from it, and again before it expires; no password
    /// anywhere.
    Keytab(PathBuf),
    /// A password: the TGT obtained in memory (no `kinit`), and again before it expires.
    Password(Zeroizing<String>),
    /// The process's credential cache (`KRB5CCNAME`), kept fresh by someone else (`k5start`).
    Cache,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Keytab(path) => write!(f, "Keytab({})", path.display()),
            Source::Password(_) => f.write_str("Password(<redacted>)"),
            Source::Cache => f.write_str("Cache"),
        }
    }
}

impl Source {
    pub fn describe(&self) -> String {
        match self {
            Source::Keytab(path) => format!("keytab {}", path.display()),
            Source::Password(_) => "password".to_string(),
            Source::Cache => match std::env::var("KRB5CCNAME") {
                Ok(cache) => format!("credential cache {cache}"),
                Err(_) => "the default credential cache".to_string(),
            },
        }
    }
}

/// MIT's com_err codes (`krb5_err.h`): the KDC's errors are `BASE + error-code`.
const BASE: i32 = -1_765_328_384;

/// The kind of a failure, from its com_err code.
fn failure_of(code: i32) -> Failure {
    match code.wrapping_sub(BASE) {
        6 => Failure::PrincipalUnknown,       // KDC_ERR_C_PRINCIPAL_UNKNOWN
        7 => Failure::SpnUnknown,             // KDC_ERR_S_PRINCIPAL_UNKNOWN
        18 | 23 => Failure::AccountRevoked, // KDC_ERR_CLIENT_REVOKED (locked too), KDC_ERR_KEY_EXP
        24 | 31 => Failure::PreauthFailed,  // KDC_ERR_PREAUTH_FAILED, KRB_AP_ERR_BAD_INTEGRITY
        32 => Failure::NoCredentials,       // KRB_AP_ERR_TKT_EXPIRED: obtained again
        37 => Failure::ClockSkew,           // KRB_AP_ERR_SKEW
        154 | 156 => Failure::KdcUnreachable, // KRB5_REALM_UNKNOWN, KRB5_KDC_UNREACH
        141 | 181 | 195 => Failure::NoCredentials, // CC_NOTFOUND, KT_NOTFOUND, FCC_NOFILE
        _ => Failure::Other,
    }
}

/// `KRB_AP_ERR_TKT_EXPIRED`: a ticket that ran out under us.
const TKT_EXPIRED: i32 = BASE + 32;

/// A Kerberos failure: its kind, and the library's words (never a secret).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{what}: {detail}")]
pub struct KrbError {
    pub failure: Failure,
    what: String,
    detail: String,
    /// The credentials ran out: obtaining them again may be all it takes.
    expired: bool,
}

impl KrbError {
    fn new(failure: Failure, what: impl Into<String>, detail: impl Into<String>) -> KrbError {
        KrbError {
            failure,
            what: what.into(),
            detail: detail.into(),
            expired: false,
        }
    }

    fn library(detail: String) -> KrbError {
        KrbError::new(Failure::Library, "MIT Kerberos", detail)
    }

    fn gss(what: impl Into<String>, status: GssStatus) -> KrbError {
        let minor = status.minor as i32;
        let mut failure = failure_of(minor);
        if failure == Failure::Other && status.major & 0x00ff_0000 == ffi::S_NO_CRED {
            failure = Failure::NoCredentials;
        }
        KrbError {
            failure,
            what: what.into(),
            detail: ffi::describe(status),
            expired: status.major & 0x00ff_0000 == ffi::S_CREDENTIALS_EXPIRED
                || minor == TKT_EXPIRED,
        }
    }

    fn krb5(what: impl Into<String>, e: ffi::Krb5Failure) -> KrbError {
        KrbError::new(failure_of(e.code), what, e.message)
    }
}

/// Credentials are re-acquired when less than this is left of them, or a fifth of their
/// lifetime when that is shorter: one AS exchange per lifetime, before the tickets expire.
const REFRESH_BEFORE: Duration = Duration::from_secs(300);

/// The security contexts' flags: the parent proves itself (mutual), messages cannot be
/// replayed or reordered; as Windows clients ask.
const FLAGS: u32 = ffi::MUTUAL_FLAG | ffi::REPLAY_FLAG | ffi::SEQUENCE_FLAG;

/// Memory caches of this process that hold tickets now: one per initiator of a keytab or a
/// password, at most (`doctor`, the tests).
static LIVE_CACHES: AtomicUsize = AtomicUsize::new(0);

/// How many of this process's memory credential caches hold tickets now.
pub fn live_caches() -> usize {
    LIVE_CACHES.load(Ordering::Relaxed)
}

/// The gateway's Kerberos identity toward one parent: credentials obtained once and kept in
/// one memory cache (the library caches service tickets there too: one KDC round trip per
/// ticket lifetime, not per connection), and the parent's service name.
pub struct Initiator {
    principal: Option<String>,
    source: Mutex<Source>,
    spn: String,
    /// `MEMORY:passerelle-…`: this initiator's tickets, for a keytab or a password.
    cache: String,
    /// Whether `cache` holds tickets (it is destroyed when the initiator goes).
    cache_live: Mutex<bool>,
    held: Mutex<Option<Held>>,
}

struct Held {
    cred: Arc<ffi::Cred>,
    principal: String,
    until: Option<Instant>,
    /// When to get new ones.
    refresh_at: Option<Instant>,
}

impl std::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Initiator")
            .field("principal", &self.principal)
            .field("source", &*self.source())
            .field("spn", &self.spn)
            .finish()
    }
}

impl Initiator {
    /// `principal` is `user@REALM` (`None`: the keytab's or the cache's own); `spn` is the
    /// parent's service as `HTTP@host`.
    pub fn new(principal: Option<String>, source: Source, spn: String) -> Initiator {
        Initiator {
            principal,
            source: Mutex::new(source),
            spn,
            cache: format!("MEMORY:passerelle-{:016x}", rand::random::<u64>()),
            cache_live: Mutex::new(false),
            held: Mutex::new(None),
        }
    }

    pub fn spn(&self) -> &str {
        &self.spn
    }

    pub fn principal(&self) -> Option<&str> {
        self.principal.as_deref()
    }

    /// The source as it is now.
    pub fn source(&self) -> std::sync::MutexGuard<'_, Source> {
        self.source.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The password as its file now holds it: when it changed, the next credentials are
    /// acquired with it (the tickets held were obtained with the old one).
    pub fn set_password(&self, password: Zeroizing<String>) {
        let mut source = self.source();
        match &*source {
            Source::Password(old) if **old != *password => {
                *source = Source::Password(password);
                drop(source);
                self.forget();
            }
            _ => {}
        }
    }

    /// Drops the credentials held, so that the next use acquires them again (a keytab that
    /// was rewritten, a password that changed).
    pub fn forget(&self) {
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The credentials, acquired now if there are none or they are about to expire. Returns
    /// the principal they are for and how long they last.
    pub fn credentials(&self) -> Result<(String, Option<Duration>), KrbError> {
        ffi::available().map_err(KrbError::library)?;
        let held = self.held()?;
        let left = held
            .until
            .map(|u| u.saturating_duration_since(Instant::now()));
        Ok((held.principal, left))
    }

    /// The keytab's keys, as `klist -k` shows them (for messages and `doctor`).
    pub fn keytab_keys(&self) -> Option<Result<Vec<ffi::KeytabEntry>, String>> {
        let Source::Keytab(path) = self.source().clone() else {
            return None;
        };
        let krb5 = match ffi::Krb5::new() {
            Ok(k) => k,
            Err(e) => return Some(Err(e.message)),
        };
        Some(
            krb5.keytab_entries(&path.display().to_string())
                .map_err(|e| e.message),
        )
    }

    fn held(&self) -> Result<Held, KrbError> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = held.as_ref() {
            let fresh = h.refresh_at.is_none_or(|at| at > Instant::now());
            if fresh {
                return Ok(Held {
                    cred: h.cred.clone(),
                    principal: h.principal.clone(),
                    until: h.until,
                    refresh_at: h.refresh_at,
                });
            }
        }
        let acquired = self.acquire()?;
        let copy = Held {
            cred: acquired.cred.clone(),
            principal: acquired.principal.clone(),
            until: acquired.until,
            refresh_at: acquired.refresh_at,
        };
        *held = Some(acquired);
        Ok(copy)
    }

    /// One AS exchange into this initiator's cache (a keytab, a password), or the process's
    /// cache as it is; then the GSS credential over it.
    fn acquire(&self) -> Result<Held, KrbError> {
        let source = self.source().clone();
        let who = self.principal.as_deref().unwrap_or("(default principal)");
        let what = format!("acquiring credentials for {who} from {}", source.describe());
        let name = match &self.principal {
            Some(p) => Some(
                ffi::Name::import(p, ffi::NT_KRB5_PRINCIPAL)
                    .map_err(|status| KrbError::gss(&what, status))?,
            ),
            None => None,
        };
        let (cred, lifetime) = match &source {
            Source::Cache => ffi::Cred::from_default_cache(name.as_ref())
                .map_err(|status| KrbError::gss(&what, status))?,
            Source::Keytab(_) | Source::Password(_) => {
                let krb5 = ffi::Krb5::new().map_err(|e| KrbError::krb5(&what, e))?;
                let (keytab, password) = match &source {
                    Source::Keytab(path) => (Some(path.display().to_string()), None),
                    Source::Password(p) => (None, Some(p.as_str())),
                    Source::Cache => (None, None),
                };
                let obtained = krb5.initial_credentials(
                    self.principal.as_deref(),
                    keytab.as_deref(),
                    password,
                    &self.cache,
                );
                let mut live = self.cache_live.lock().unwrap_or_else(|p| p.into_inner());
                if obtained.is_ok() && !*live {
                    *live = true;
                    LIVE_CACHES.fetch_add(1, Ordering::Relaxed);
                }
                drop(live);
                obtained.map_err(|e| {
                    let mut error = KrbError::krb5(&what, e);
                    if error.failure == Failure::PreauthFailed {
                        if let Some(Ok(keys)) = self.keytab_keys() {
                            error
                                .detail
                                .push_str(&format!(" (the keytab holds {})", keys_in_words(&keys)));
                        }
                    }
                    error
                })?;
                ffi::Cred::from_cache(name.as_ref(), &self.cache)
                    .map_err(|status| KrbError::gss(&what, status))?
            }
        };
        let principal = cred
            .principal()
            .or_else(|| self.principal.clone())
            .unwrap_or_default();
        let life =
            (lifetime != u32::MAX && lifetime != 0).then(|| Duration::from_secs(lifetime.into()));
        let now = Instant::now();
        Ok(Held {
            cred: Arc::new(cred),
            principal,
            until: life.map(|l| now + l),
            refresh_at: life.map(|l| now + l - REFRESH_BEFORE.min(l / 5)),
        })
    }

    /// A new security context for one parent connection, and its first token. The library
    /// is checked first: a host without it hears so, not another failure.
    pub fn begin(&self) -> Result<(Context, Vec<u8>), KrbError> {
        ffi::available().map_err(KrbError::library)?;
        let target = ffi::Name::import(&self.spn, ffi::NT_HOSTBASED_SERVICE)
            .map_err(|status| KrbError::gss(format!("the SPN {}", self.spn), status))?;
        let mut context = Context {
            ctx: ffi::SecurityContext::new(),
            target,
            cred: self.held()?.cred,
            complete: false,
            mutual: false,
            spn: self.spn.clone(),
        };
        match context.first() {
            Ok(token) => Ok((context, token)),
            Err(e) if e.expired || e.failure == Failure::NoCredentials => {
                // The credentials went stale under us: once more, freshly acquired.
                self.forget();
                context.cred = self.held()?.cred;
                context.ctx = ffi::SecurityContext::new();
                let token = context.first()?;
                Ok((context, token))
            }
            Err(e) => Err(e),
        }
    }
}

impl Drop for Initiator {
    fn drop(&mut self) {
        let live = *self.cache_live.lock().unwrap_or_else(|p| p.into_inner());
        if !live {
            return;
        }
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if let Ok(krb5) = ffi::Krb5::new() {
            if krb5.destroy_cache(&self.cache).is_ok() {
                LIVE_CACHES.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

/// A keytab's keys in words: principals, key versions, encryption types.
fn keys_in_words(keys: &[ffi::KeytabEntry]) -> String {
    if keys.is_empty() {
        return "no key".to_string();
    }
    let mut words: Vec<String> = keys
        .iter()
        .map(|k| {
            format!(
                "{} kvno {} ({})",
                k.principal,
                k.kvno,
                enctype_name(k.enctype)
            )
        })
        .collect();
    words.dedup();
    words.join(", ")
}

/// An encryption type's name, as `klist -e` writes the common ones.
pub fn enctype_name(enctype: i32) -> String {
    match enctype {
        17 => "aes128-cts-hmac-sha1-96".to_string(),
        18 => "aes256-cts-hmac-sha1-96".to_string(),
        19 => "aes128-cts-hmac-sha256-128".to_string(),
        20 => "aes256-cts-hmac-sha384-192".to_string(),
        23 => "rc4-hmac".to_string(),
        other => format!("enctype {other}"),
    }
}

/// One parent connection's SPNEGO context. Its fields drop in order: the context is deleted
/// before the credential it was made with is released.
pub struct Context {
    ctx: ffi::SecurityContext,
    target: ffi::Name,
    cred: Arc<ffi::Cred>,
    complete: bool,
    /// The mechanism granted mutual authentication: the parent's answer proves it.
    mutual: bool,
    spn: String,
}

impl Context {
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Whether the parent was asked to prove itself, and the mechanism agreed.
    pub fn mutual(&self) -> bool {
        self.mutual
    }

    /// Feeds the parent's token (a continuation, or the final one that proves the parent);
    /// returns the next token to send, if any.
    pub fn step(&mut self, token: &[u8]) -> Result<Option<Vec<u8>>, KrbError> {
        self.run(ffi::MECH_SPNEGO, Some(token))
            .map(|t| Some(t).filter(|t| !t.is_empty()))
    }

    /// The first token. SPNEGO wraps a Kerberos error in one of its own: on such a failure the
    /// krb5 mechanism is asked directly (a TGS exchange at most, never the account's key) for
    /// the failure as the KDC gave it.
    fn first(&mut self) -> Result<Vec<u8>, KrbError> {
        match self.run(ffi::MECH_SPNEGO, None) {
            Err(e) if e.failure == Failure::Other && !e.expired => {
                let mut probe = ffi::SecurityContext::new();
                match probe.step(&self.cred, &self.target, ffi::MECH_KRB5, FLAGS, None) {
                    Err(status) => {
                        let krb5 =
                            KrbError::gss(format!("a service ticket for {}", self.spn), status);
                        Err(if krb5.failure != Failure::Other {
                            krb5
                        } else {
                            e
                        })
                    }
                    Ok(_) => Err(e),
                }
            }
            other => other,
        }
    }

    fn run(&mut self, mech: &'static [u8], input: Option<&[u8]>) -> Result<Vec<u8>, KrbError> {
        match self.ctx.step(&self.cred, &self.target, mech, FLAGS, input) {
            Ok(step) => {
                self.complete = step.complete;
                self.mutual = step.flags & ffi::MUTUAL_FLAG != 0;
                Ok(step.token)
            }
            Err(status) => {
                let what = if input.is_some() {
                    format!("the parent's token for {}", self.spn)
                } else {
                    format!("a service ticket for {}", self.spn)
                };
                let mut e = KrbError::gss(what, status);
                if input.is_some() && e.failure == Failure::Other {
                    e.failure = Failure::BadToken;
                }
                Err(e)
            }
        }
    }
}

impl KrbError {
    /// As the handshake sees it: the stable code, and words naming the SPN and principal.
    fn for_handshake(&self, initiator: &Initiator) -> passerelle_auth::NegotiateError {
        passerelle_auth::NegotiateError {
            failure: self.failure,
            detail: format!(
                "{self} (SPN {}, principal {})",
                initiator.spn,
                initiator
                    .principal
                    .as_deref()
                    .unwrap_or("from the credentials")
            ),
        }
    }
}

impl passerelle_auth::Negotiator for Initiator {
    fn begin(
        &self,
    ) -> Result<(Box<dyn passerelle_auth::SecurityContext>, Vec<u8>), passerelle_auth::NegotiateError>
    {
        let (context, token) = Initiator::begin(self).map_err(|e| e.for_handshake(self))?;
        Ok((Box::new(context), token))
    }

    fn spn(&self) -> &str {
        &self.spn
    }
}

impl passerelle_auth::SecurityContext for Context {
    fn step(&mut self, token: &[u8]) -> Result<Option<Vec<u8>>, passerelle_auth::NegotiateError> {
        Context::step(self, token).map_err(|e| passerelle_auth::NegotiateError {
            failure: e.failure,
            detail: format!("{e} (SPN {})", self.spn),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn com_err_codes_map_to_failures() {
        for (code, failure) in [
            (-1_765_328_360, Failure::PreauthFailed),
            (-1_765_328_378, Failure::PrincipalUnknown),
            (-1_765_328_377, Failure::SpnUnknown),
            (-1_765_328_347, Failure::ClockSkew),
            (-1_765_328_228, Failure::KdcUnreachable),
            (-1_765_328_366, Failure::AccountRevoked),
            (-1_765_328_361, Failure::AccountRevoked),
            (-1_765_328_352, Failure::NoCredentials),
            (12345, Failure::Other),
        ] {
            assert_eq!(failure_of(code), failure, "{code}");
        }
    }

    #[test]
    fn an_expired_ticket_is_told_by_its_code_not_its_words() {
        let by_minor = KrbError::gss(
            "x",
            GssStatus {
                major: 13 << 16,
                minor: TKT_EXPIRED as u32,
            },
        );
        assert!(by_minor.expired);
        let by_major = KrbError::gss(
            "x",
            GssStatus {
                major: ffi::S_CREDENTIALS_EXPIRED,
                minor: 0,
            },
        );
        assert!(by_major.expired);
        let other = KrbError::gss(
            "x",
            GssStatus {
                major: 13 << 16,
                minor: 0,
            },
        );
        assert!(!other.expired);
    }

    #[test]
    fn a_password_never_shows() {
        let s = Source::Password(Zeroizing::new("Sup3rS3cret".into()));
        assert!(!format!("{s:?}").contains("Sup3r"));
        assert_eq!(s.describe(), "password");
        let i = Initiator::new(Some("svc@R".into()), s, "HTTP@p".into());
        assert!(!format!("{i:?}").contains("Sup3r"));
    }

    #[test]
    fn keys_are_named_as_klist_names_them() {
        let keys = [
            ffi::KeytabEntry {
                principal: "svc@R".into(),
                kvno: 3,
                enctype: 18,
            },
            ffi::KeytabEntry {
                principal: "svc@R".into(),
                kvno: 3,
                enctype: 17,
            },
        ];
        assert_eq!(
            keys_in_words(&keys),
            "svc@R kvno 3 (aes256-cts-hmac-sha1-96), svc@R kvno 3 (aes128-cts-hmac-sha1-96)"
        );
        assert_eq!(keys_in_words(&[]), "no key");
    }
}
