//! The secret a parent's account presents, as it is now. A password from the environment is
//! fixed until a reload; a password file, an NT hash file or a keytab may be rewritten (a
//! rotation, the fix after a refusal) and is read again when it changes, without a reload. Its
//! fingerprint tells the account whether this is still the secret the domain refused.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use passerelle_auth::Credentials;
use passerelle_config::{KerberosSource, SecretFile, Upstream};
use zeroize::Zeroizing;

use super::account::Fingerprint;

/// The secret as it is now.
#[derive(Clone)]
pub struct Current {
    /// For NTLM and Basic.
    pub credentials: Option<Arc<Credentials>>,
    /// A Kerberos password read from a file (`None`: the initiator's own source).
    pub kerberos_password: Option<Zeroizing<String>>,
    /// Everything this parent may present, as one identity.
    pub fingerprint: Fingerprint,
    /// Where a person fixes it: the file, or the environment variable's name.
    pub source: String,
}

/// A file's identity on disk: a rewrite changes one of these (the content decides).
#[derive(Clone, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

fn stamp(path: &std::path::Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        len: meta.len(),
        modified: meta.modified().ok(),
        inode: meta.ino(),
    })
}

pub struct Secret {
    user: Option<String>,
    domain: Option<String>,
    file: Option<SecretFile>,
    keytab: Option<PathBuf>,
    /// What was read last, and the stamps of the files it was read from.
    seen: Mutex<(Vec<Option<Stamp>>, Current)>,
}

impl Secret {
    /// The secret of `settings`, as the configuration read it (at start or reload).
    pub fn new(settings: &Upstream, user: Option<String>) -> Secret {
        let keytab = settings.kerberos.as_ref().and_then(|k| match &k.source {
            KerberosSource::Keytab(path) => Some(path.clone()),
            _ => None,
        });
        let kerberos_password = settings.kerberos.as_ref().and_then(|k| match &k.source {
            KerberosSource::Password(passerelle_auth::Secret::Password(p)) => {
                Some(Zeroizing::new(p.clone()))
            }
            _ => None,
        });
        let credentials = settings.credentials.clone().map(Arc::new);
        let source = match (&settings.secret_file, &keytab) {
            (Some(file), _) => file.path.display().to_string(),
            (None, Some(keytab)) => keytab.display().to_string(),
            (None, None) => "the configured secret".to_string(),
        };
        let (domain, user) = match &settings.credentials {
            Some(c) => (Some(c.domain.clone()), Some(c.user.clone())),
            None => (None, user),
        };
        let files = [
            settings.secret_file.as_ref().map(|f| f.path.as_path()),
            keytab.as_deref(),
        ];
        let stamps = files.iter().map(|f| f.and_then(stamp)).collect();
        let mut current = Current {
            credentials,
            kerberos_password,
            fingerprint: Fingerprint::default(),
            source,
        };
        let keytab_bytes = keytab.as_deref().and_then(|k| std::fs::read(k).ok());
        current.fingerprint = fingerprint(&current, keytab_bytes.as_deref());
        Secret {
            user,
            domain,
            file: settings.secret_file.clone(),
            keytab,
            seen: Mutex::new((stamps, current)),
        }
    }

    /// The secret now: the files read again when they changed on disk. A file that cannot be
    /// read keeps what was read before (and says so once).
    pub fn current(&self) -> Current {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let files = [
            self.file.as_ref().map(|f| f.path.as_path()),
            self.keytab.as_deref(),
        ];
        let stamps: Vec<Option<Stamp>> = files.iter().map(|f| f.and_then(stamp)).collect();
        if stamps == seen.0 {
            return seen.1.clone();
        }
        let mut current = seen.1.clone();
        if let Some(file) = &self.file {
            match file.read() {
                Ok(secret) => {
                    let user = self.user.as_deref().unwrap_or_default();
                    if let Some(old) = &current.credentials {
                        let renewed =
                            Credentials::new(&old.user, Some(&old.domain), secret.clone());
                        current.credentials = renewed.ok().map(Arc::new);
                    } else if !user.is_empty() {
                        current.credentials =
                            Credentials::new(user, self.domain.as_deref(), secret.clone())
                                .ok()
                                .map(Arc::new);
                    }
                    if current.kerberos_password.is_some() {
                        if let passerelle_auth::Secret::Password(p) = &secret {
                            current.kerberos_password = Some(Zeroizing::new(p.clone()));
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(file = %file.path.display(), error = %e, "secret.unreadable: keeping the secret read before");
                }
            }
        }
        let keytab_bytes = self.keytab.as_deref().and_then(|k| std::fs::read(k).ok());
        current.fingerprint = fingerprint(&current, keytab_bytes.as_deref());
        if current.fingerprint != seen.1.fingerprint {
            tracing::info!(source = %current.source, "secret.changed: the next presentation uses it");
        }
        *seen = (stamps, current.clone());
        current
    }
}

/// One identity for everything a parent may present: the password or NT hash, the Kerberos
/// password, the keytab's bytes.
fn fingerprint(current: &Current, keytab: Option<&[u8]>) -> Fingerprint {
    let mut bytes = Zeroizing::new(Vec::new());
    if let Some(c) = &current.credentials {
        bytes.extend_from_slice(b"ntlm:");
        bytes.extend_from_slice(&*c.secret().nt_hash());
        if let passerelle_auth::Secret::Password(p) = c.secret() {
            bytes.extend_from_slice(b"password:");
            bytes.extend_from_slice(p.as_bytes());
        }
    }
    if let Some(p) = &current.kerberos_password {
        bytes.extend_from_slice(b"kerberos:");
        bytes.extend_from_slice(p.as_bytes());
    }
    if let Some(k) = keytab {
        bytes.extend_from_slice(b"keytab:");
        bytes.extend_from_slice(k);
    }
    Fingerprint::of(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(dir: &std::path::Path, password: &str) -> Upstream {
        let path = dir.join("password");
        std::fs::write(&path, format!("{password}\n")).unwrap();
        let text = format!(
            "[[upstream]]\nurl = \"http://proxy.test:8080\"\nauth = \"ntlm\"\nuser = 'CHU\\svc'\npassword_file = \"{}\"\n",
            path.display()
        );
        passerelle_config::load_str(Some(&text), None, &Default::default())
            .unwrap()
            .upstreams
            .remove(0)
    }

    #[test]
    fn a_rewritten_password_file_is_read_again_and_its_fingerprint_changes() {
        let dir = tempfile::tempdir().unwrap();
        let settings = upstream(dir.path(), "first-password");
        let secret = Secret::new(&settings, None);
        let before = secret.current();
        assert_eq!(
            secret.current().fingerprint,
            before.fingerprint,
            "unchanged"
        );
        // Rewritten as tools do: a new file renamed over the old one.
        let fresh = dir.path().join("password.new");
        std::fs::write(&fresh, "second-password\n").unwrap();
        std::fs::rename(&fresh, dir.path().join("password")).unwrap();
        let after = secret.current();
        assert_ne!(after.fingerprint, before.fingerprint);
        let creds = after.credentials.unwrap();
        assert_eq!(creds.account(), "CHU\\svc");
        assert_eq!(
            *creds.secret(),
            passerelle_auth::Secret::Password("second-password".into())
        );
        // Touched with the same content: the same secret.
        std::fs::write(dir.path().join("password"), "second-password\n").unwrap();
        assert_eq!(secret.current().fingerprint, after.fingerprint);
        // Unreadable: the last secret read stays.
        std::fs::remove_file(dir.path().join("password")).unwrap();
        assert_eq!(secret.current().fingerprint, after.fingerprint);
    }
}
