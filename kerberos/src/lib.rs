//! Kerberos for parent proxies that demand `Negotiate`: the gateway's credentials (a client
//! keytab, a password, or the process's credential cache), one SPNEGO security context per
//! parent connection, and failures told apart (no credentials, KDC unreachable, unknown
//! principal, wrong password, clock skew, unknown SPN). Every call may block on the KDC: run
//! them off the async runtime.

mod ffi;

use std::ffi::CString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

/// Where the gateway's Kerberos credentials come from, in the order of preference.
#[derive(Clone, PartialEq, Eq)]
pub enum Source {
    /// A client keytab: tickets obtained and renewed by the library, no password anywhere.
    Keytab(PathBuf),
    /// A password: a TGT obtained in memory (no `kinit`), again before it expires.
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

pub use passerelle_auth::KerberosFailure as Failure;

/// From MIT's com_err codes (the minor status), `krb5_err.h`.
fn failure_of(minor: u32) -> Failure {
    const BASE: i32 = -1_765_328_384;
    match minor as i32 - BASE {
        6 => Failure::PrincipalUnknown,       // KDC_ERR_C_PRINCIPAL_UNKNOWN
        7 => Failure::SpnUnknown,             // KDC_ERR_S_PRINCIPAL_UNKNOWN
        18 | 23 => Failure::AccountRevoked,   // KDC_ERR_CLIENT_REVOKED, KDC_ERR_KEY_EXP
        24 | 31 => Failure::PreauthFailed,    // KDC_ERR_PREAUTH_FAILED, AP_ERR_BAD_INTEGRITY
        37 => Failure::ClockSkew,             // KRB_AP_ERR_SKEW
        154 | 156 => Failure::KdcUnreachable, // KRB5_REALM_UNKNOWN, KRB5_KDC_UNREACH
        141 | 181 | 195 => Failure::NoCredentials, // CC_NOTFOUND, KT_NOTFOUND, FCC_NOFILE
        _ => Failure::Other,
    }
}

/// A Kerberos failure: its kind, and the library's words (never a secret).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{what}: {detail}")]
pub struct KrbError {
    pub failure: Failure,
    what: String,
    detail: String,
}

impl KrbError {
    fn new(failure: Failure, what: impl Into<String>, detail: impl Into<String>) -> KrbError {
        KrbError {
            failure,
            what: what.into(),
            detail: detail.into(),
        }
    }

    fn from_status(what: impl Into<String>, major: u32, minor: u32) -> KrbError {
        let mut failure = failure_of(minor);
        let detail = if minor != 0 {
            ffi::describe(minor, ffi::C_MECH_CODE)
        } else {
            ffi::describe(major, ffi::C_GSS_CODE)
        };
        if failure == Failure::Other && major >> 16 == 7 {
            failure = Failure::NoCredentials; // GSS_S_NO_CRED
        }
        KrbError::new(failure, what, detail)
    }
}

/// Credentials re-acquired when less than this is left of them.
const REFRESH_BEFORE: Duration = Duration::from_secs(300);

/// The gateway's Kerberos identity toward one parent: credentials acquired once and cached
/// (the library caches service tickets with them: one KDC round trip per ticket lifetime, not
/// per connection), and the parent's service name.
pub struct Initiator {
    principal: Option<String>,
    source: Source,
    spn: String,
    cred: Mutex<Option<Held>>,
}

struct Held {
    cred: Arc<ffi::OwnedCred>,
    until: Option<Instant>,
}

impl std::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Initiator")
            .field("principal", &self.principal)
            .field("source", &self.source)
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
            source,
            spn,
            cred: Mutex::new(None),
        }
    }

    pub fn spn(&self) -> &str {
        &self.spn
    }

    pub fn principal(&self) -> Option<&str> {
        self.principal.as_deref()
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    /// The credentials, acquired now if there are none or they are about to expire. Returns
    /// the principal they are for and how long they last.
    pub fn credentials(&self) -> Result<(String, Option<Duration>), KrbError> {
        let (cred, until) = self.cred()?;
        let api = ffi::api().map_err(|e| KrbError::new(Failure::Library, "GSS-API", e))?;
        let mut minor = 0;
        let mut name: ffi::Name = std::ptr::null_mut();
        // SAFETY: a valid credential handle; the name it returns is ours to release.
        let major = unsafe {
            (api.inquire_cred)(
                &mut minor,
                cred.0,
                &mut name,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        let name = ffi::OwnedName(name);
        let who = if ffi::is_error(major) {
            self.principal.clone().unwrap_or_default()
        } else {
            name.display()
        };
        Ok((
            who,
            until.map(|u| u.saturating_duration_since(Instant::now())),
        ))
    }

    fn cred(&self) -> Result<(Arc<ffi::OwnedCred>, Option<Instant>), KrbError> {
        let mut held = self.cred.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = held.as_ref() {
            let fresh = h
                .until
                .is_none_or(|until| until > Instant::now() + REFRESH_BEFORE);
            if fresh {
                return Ok((h.cred.clone(), h.until));
            }
        }
        let (cred, lifetime) = self.acquire()?;
        let until = lifetime.map(|l| Instant::now() + l);
        *held = Some(Held {
            cred: cred.clone(),
            until,
        });
        Ok((cred, until))
    }

    fn forget(&self) {
        *self.cred.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn acquire(&self) -> Result<(Arc<ffi::OwnedCred>, Option<Duration>), KrbError> {
        let api = ffi::api().map_err(|e| KrbError::new(Failure::Library, "GSS-API", e))?;
        let who = self.principal.as_deref().unwrap_or("(default principal)");
        let what = format!(
            "acquiring credentials for {who} from {}",
            self.source.describe()
        );
        let name = match &self.principal {
            Some(p) => Some(
                ffi::OwnedName::import(p, ffi::NT_KRB5_PRINCIPAL)
                    .map_err(|(major, minor)| KrbError::from_status(&what, major, minor))?,
            ),
            None => None,
        };
        let desired = name.as_ref().map_or(std::ptr::null_mut(), |n| n.0);
        // Tickets from a keytab or a password go to a cache of this process's own, in memory.
        let cache = format!("MEMORY:passerelle-{:016x}", rand::random::<u64>());
        match &self.source {
            Source::Cache => acquire_from(api, desired, &[], &what),
            Source::Keytab(path) => {
                let keytab = path.display().to_string();
                acquire_from(
                    api,
                    desired,
                    &[("client_keytab", &keytab), ("ccache", &cache)],
                    &what,
                )
            }
            Source::Password(password) => {
                // For the krb5 mechanism alone (its errors come through as they are), then
                // stored and acquired again for every mechanism, SPNEGO included.
                let buffer = ffi::BufferDesc::of(password.as_bytes());
                let mut krb5 = [ffi::oid(ffi::MECH_KRB5)];
                let set = ffi::OidSetDesc {
                    count: 1,
                    elements: krb5.as_mut_ptr(),
                };
                let (mut minor, mut cred, mut lifetime) = (0, std::ptr::null_mut(), 0u32);
                // SAFETY: the password buffer and the mechanism set outlive the call; the
                // handle it returns is owned below.
                let major = unsafe {
                    (api.acquire_cred_with_password)(
                        &mut minor,
                        desired,
                        &buffer,
                        ffi::C_INDEFINITE,
                        &set as *const ffi::OidSetDesc as *const std::ffi::c_void,
                        ffi::C_INITIATE,
                        &mut cred,
                        std::ptr::null_mut(),
                        &mut lifetime,
                    )
                };
                if ffi::is_error(major) {
                    return Err(KrbError::from_status(what, major, minor));
                }
                let krb5_cred = ffi::OwnedCred(cred);
                let store = KeyValues::new(&[("ccache", &cache)]);
                let mech = ffi::oid(ffi::MECH_KRB5);
                // SAFETY: a valid credential, mechanism and store; nothing is returned to own.
                let major = unsafe {
                    (api.store_cred_into)(
                        &mut minor,
                        krb5_cred.0,
                        ffi::C_INITIATE,
                        &mech,
                        1,
                        0,
                        store.set(),
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                    )
                };
                if ffi::is_error(major) {
                    return Err(KrbError::from_status(what, major, minor));
                }
                let (cred, _) = acquire_from(api, desired, &[("ccache", &cache)], &what)?;
                Ok((cred, lifetime_of(lifetime)))
            }
        }
    }

    /// A new security context for one parent connection, and its first token.
    pub fn begin(&self) -> Result<(Context, Vec<u8>), KrbError> {
        let target = ffi::OwnedName::import(&self.spn, ffi::NT_HOSTBASED_SERVICE).map_err(
            |(major, minor)| KrbError::from_status(format!("the SPN {}", self.spn), major, minor),
        )?;
        let mut context = Context {
            cred: self.cred()?.0,
            target,
            ctx: ffi::OwnedCtx(std::ptr::null_mut()),
            complete: false,
            spn: self.spn.clone(),
        };
        match context.init(None) {
            Ok(token) => Ok((context, token.unwrap_or_default())),
            Err(e) if e.failure == Failure::NoCredentials || e.detail.contains("expired") => {
                // The cached credentials went stale under us: once more, freshly acquired.
                self.forget();
                context.cred = self.cred()?.0;
                context.ctx = ffi::OwnedCtx(std::ptr::null_mut());
                let token = context.init(None)?;
                Ok((context, token.unwrap_or_default()))
            }
            Err(e) => Err(e),
        }
    }
}

/// One parent connection's SPNEGO context.
pub struct Context {
    cred: Arc<ffi::OwnedCred>,
    target: ffi::OwnedName,
    ctx: ffi::OwnedCtx,
    complete: bool,
    spn: String,
}

impl Context {
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Feeds the parent's token (a continuation, or a final one to verify); returns the next
    /// token to send, if any.
    pub fn step(&mut self, token: &[u8]) -> Result<Option<Vec<u8>>, KrbError> {
        self.init(Some(token))
    }

    fn init(&mut self, input: Option<&[u8]>) -> Result<Option<Vec<u8>>, KrbError> {
        match self.init_with(ffi::MECH_SPNEGO, input) {
            // SPNEGO wraps the Kerberos error in one of its own: the first leg asks the
            // krb5 mechanism directly, for the failure as the KDC gave it.
            Err(e) if input.is_none() && e.failure == Failure::Other => {
                let mut probe = Context {
                    cred: self.cred.clone(),
                    target: ffi::OwnedName(std::ptr::null_mut()),
                    ctx: ffi::OwnedCtx(std::ptr::null_mut()),
                    complete: false,
                    spn: self.spn.clone(),
                };
                std::mem::swap(&mut probe.target, &mut self.target);
                let diagnosis = probe.init_with(ffi::MECH_KRB5, None);
                std::mem::swap(&mut probe.target, &mut self.target);
                match diagnosis {
                    Err(krb5) if krb5.failure != Failure::Other => Err(krb5),
                    _ => Err(e),
                }
            }
            other => other,
        }
    }

    fn init_with(
        &mut self,
        mech: &'static [u8],
        input: Option<&[u8]>,
    ) -> Result<Option<Vec<u8>>, KrbError> {
        let api = ffi::api().map_err(|e| KrbError::new(Failure::Library, "GSS-API", e))?;
        let mech = ffi::oid(mech);
        let input = input.map(ffi::BufferDesc::of);
        let mut output = ffi::BufferDesc::empty();
        let mut minor = 0;
        // SAFETY: handles owned by self; the input buffer outlives the call; the output
        // buffer is released by `take`.
        let major = unsafe {
            (api.init_sec_context)(
                &mut minor,
                self.cred.0,
                &mut self.ctx.0,
                self.target.0,
                &mech,
                0,
                0,
                std::ptr::null(),
                input
                    .as_ref()
                    .map_or(std::ptr::null(), |b| b as *const ffi::BufferDesc),
                std::ptr::null_mut(),
                &mut output,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        let token = ffi::take(api, &mut output);
        if ffi::is_error(major) {
            let what = format!("a service ticket for {}", self.spn);
            let mut e = KrbError::from_status(what, major, minor);
            if input.is_some() && e.failure == Failure::Other {
                e.failure = Failure::BadToken;
            }
            if major == ffi::S_CREDENTIALS_EXPIRED {
                e.detail.push_str(" (expired)");
            }
            return Err(e);
        }
        self.complete = major & ffi::S_CONTINUE_NEEDED == 0;
        Ok(token.filter(|t| !t.is_empty()))
    }
}

/// A `gss_key_value_set` and the C strings it points to.
struct KeyValues {
    _strings: Vec<CString>,
    elements: Vec<ffi::KeyValue>,
    set: ffi::KeyValueSet,
}

impl KeyValues {
    fn new(pairs: &[(&str, &str)]) -> Box<KeyValues> {
        let strings: Vec<CString> = pairs
            .iter()
            .flat_map(|(k, v)| [*k, *v])
            .map(|s| CString::new(s.replace('\0', "")).expect("no NUL left"))
            .collect();
        let elements: Vec<ffi::KeyValue> = strings
            .chunks(2)
            .map(|kv| ffi::KeyValue {
                key: kv[0].as_ptr(),
                value: kv[1].as_ptr(),
            })
            .collect();
        let mut boxed = Box::new(KeyValues {
            _strings: strings,
            elements,
            set: ffi::KeyValueSet {
                count: 0,
                elements: std::ptr::null(),
            },
        });
        boxed.set = ffi::KeyValueSet {
            count: boxed.elements.len() as u32,
            elements: boxed.elements.as_ptr(),
        };
        boxed
    }

    fn set(&self) -> *const ffi::KeyValueSet {
        &self.set
    }
}

/// Credentials for every mechanism from `store` (empty: the default cache).
fn acquire_from(
    api: &ffi::Api,
    desired: ffi::Name,
    store: &[(&str, &str)],
    what: &str,
) -> Result<(Arc<ffi::OwnedCred>, Option<Duration>), KrbError> {
    let (mut minor, mut cred, mut lifetime) = (0, std::ptr::null_mut(), 0u32);
    let major = if store.is_empty() {
        // SAFETY: valid pointers to locals; no mechanism set (all of them).
        unsafe {
            (api.acquire_cred)(
                &mut minor,
                desired,
                ffi::C_INDEFINITE,
                std::ptr::null(),
                ffi::C_INITIATE,
                &mut cred,
                std::ptr::null_mut(),
                &mut lifetime,
            )
        }
    } else {
        let store = KeyValues::new(store);
        // SAFETY: the store's strings live until the call returns.
        unsafe {
            (api.acquire_cred_from)(
                &mut minor,
                desired,
                ffi::C_INDEFINITE,
                std::ptr::null(),
                ffi::C_INITIATE,
                store.set(),
                &mut cred,
                std::ptr::null_mut(),
                &mut lifetime,
            )
        }
    };
    if ffi::is_error(major) {
        return Err(KrbError::from_status(what, major, minor));
    }
    Ok((Arc::new(ffi::OwnedCred(cred)), lifetime_of(lifetime)))
}

fn lifetime_of(seconds: u32) -> Option<Duration> {
    (seconds != ffi::C_INDEFINITE && seconds != 0).then(|| Duration::from_secs(seconds.into()))
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

/// Is the GSS-API library there? (`doctor`, and a clear error at start.)
pub fn available() -> Result<(), String> {
    ffi::api().map(|_| ())
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
            (12345, Failure::Other),
        ] {
            assert_eq!(failure_of(code as u32), failure, "{code}");
        }
    }

    #[test]
    fn a_password_never_shows() {
        let s = Source::Password(Zeroizing::new("Sup3rS3cret".into()));
        assert!(!format!("{s:?}").contains("Sup3r"));
        assert_eq!(s.describe(), "password");
        let i = Initiator::new(Some("svc@R".into()), s, "HTTP@p".into());
        assert!(!format!("{i:?}").contains("Sup3r"));
    }
}
