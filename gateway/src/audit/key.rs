//! The chain's key (`audit.key_file`): static, or forward-secure, evolving each minute
//! (`k(n+1) = HMAC(k(n), "next")`) so that whoever takes the host holds only today's key.
//!
//! A forward-secure key file is text, rewritten atomically at each step:
//!
//! ```text
//! passerelle-audit-key 1
//! origin 1764763200        # unix seconds of epoch 0: epoch n covers origin + 60n .. + 60
//! epoch 42
//! key 3f…                  # k(42), hex
//! ```
//!
//! Epochs are minutes since `origin`, so a record's `key_epoch` says when it was sealed: a
//! verifier holding k(0) and the origin (the initial key `passerelle audit keygen` printed,
//! `v1:ORIGIN:HEX`) checks each record with its epoch's key and that no record was sealed
//! long after it ended, which is what re-signing an old record with a later key looks like.
//! Any other file is a static key (its bytes, 16 or more).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// How long one key lives.
pub const EPOCH: Duration = Duration::from_secs(60);

const MAGIC: &str = "passerelle-audit-key 1";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the key {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("cannot write the key {path}: {cause}")]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("the key {path} is not usable: {why}")]
    Malformed { path: PathBuf, why: String },
    /// The value is not repeated: it may be a key given in the wrong place.
    #[error(
        "this is not an initial key: it is v1:ORIGIN:HEX, as `passerelle audit keygen` printed it"
    )]
    Initial,
    #[error("{0} exists: a new initial key would orphan the records signed with the old one; move it away first")]
    Exists(PathBuf),
}

/// 32 key bytes, erased when dropped.
type Secret = Zeroizing<Vec<u8>>;

/// The chain value that follows `previous` for a record whose bytes (without `chain`) are
/// `record`: HMAC-SHA-256 with a key, SHA-256 without.
pub fn value(key: Option<&[u8]>, previous: &str, record: &[u8]) -> String {
    match key {
        Some(key) => {
            let mut mac =
                <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
            mac.update(previous.as_bytes());
            mac.update(record);
            hex::encode(mac.finalize().into_bytes())
        }
        None => {
            let mut h = Sha256::new();
            h.update(previous.as_bytes());
            h.update(record);
            hex::encode(h.finalize())
        }
    }
}

/// The next key: `HMAC(k, "next")`.
fn step(key: &[u8]) -> Secret {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(b"next");
    Zeroizing::new(mac.finalize().into_bytes().to_vec())
}

/// The epoch covering `t`, for a key whose epoch 0 began at `origin`.
pub fn epoch_at(origin: u64, t: SystemTime) -> u64 {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    secs.saturating_sub(origin) / EPOCH.as_secs()
}

/// The writer's key.
pub enum Key {
    Static(Secret),
    Evolving(Evolving),
}

/// A forward-secure key at its current epoch, and the file it lives in.
pub struct Evolving {
    path: PathBuf,
    origin: u64,
    epoch: u64,
    key: Secret,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Static(_) => f.write_str("Key::Static(redacted)"),
            Key::Evolving(e) => write!(f, "Key::Evolving(epoch {}, redacted)", e.epoch),
        }
    }
}

impl Key {
    /// Reads `path`: a forward-secure key file, or a static key.
    pub fn load(path: &Path) -> Result<Key, KeyError> {
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|cause| KeyError::Read {
            path: path.to_path_buf(),
            cause,
        })?);
        if bytes.starts_with(MAGIC.as_bytes()) {
            let (origin, epoch, key) = parse_file(&bytes).map_err(|why| KeyError::Malformed {
                path: path.to_path_buf(),
                why,
            })?;
            return Ok(Key::Evolving(Evolving {
                path: path.to_path_buf(),
                origin,
                epoch,
                key,
            }));
        }
        if bytes.len() < 16 {
            return Err(KeyError::Malformed {
                path: path.to_path_buf(),
                why: format!("{} bytes: a static key has 16 or more", bytes.len()),
            });
        }
        Ok(Key::Static(Zeroizing::new(bytes.to_vec())))
    }

    /// Creates a forward-secure key file at epoch 0 (origin: this minute) and returns the
    /// initial key, to be printed once and kept off the host.
    pub fn generate(path: &Path, now: SystemTime) -> Result<Zeroizing<String>, KeyError> {
        if path.exists() {
            return Err(KeyError::Exists(path.to_path_buf()));
        }
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let origin = secs - secs % EPOCH.as_secs();
        let key = Zeroizing::new(rand::random::<[u8; 32]>().to_vec());
        let evolving = Evolving {
            path: path.to_path_buf(),
            origin,
            epoch: 0,
            key,
        };
        evolving.save()?;
        Ok(Zeroizing::new(format!(
            "v1:{origin}:{}",
            hex::encode(&*evolving.key)
        )))
    }

    /// The key that signs now.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Key::Static(k) => k,
            Key::Evolving(e) => &e.key,
        }
    }

    /// The current epoch, for a forward-secure key.
    pub fn epoch(&self) -> Option<u64> {
        match self {
            Key::Static(_) => None,
            Key::Evolving(e) => Some(e.epoch),
        }
    }

    /// When the key must next move forward.
    pub fn next_step(&self) -> Option<SystemTime> {
        match self {
            Key::Static(_) => None,
            Key::Evolving(e) => {
                Some(UNIX_EPOCH + Duration::from_secs(e.origin + (e.epoch + 1) * EPOCH.as_secs()))
            }
        }
    }

    /// Moves the key to the epoch covering `now` (never backwards: a clock stepped back waits),
    /// erasing the older keys from memory and from the file. Returns whether it moved; an
    /// error means the file still holds an older key (memory has moved on regardless).
    pub fn advance(&mut self, now: SystemTime) -> Result<bool, KeyError> {
        let Key::Evolving(e) = self else {
            return Ok(false);
        };
        let target = epoch_at(e.origin, now);
        if target <= e.epoch {
            return Ok(false);
        }
        while e.epoch < target {
            e.key = step(&e.key);
            e.epoch += 1;
        }
        e.save()?;
        Ok(true)
    }
}

impl Evolving {
    /// Writes the key file whole through a temporary file and a rename, then syncs both: no
    /// moment leaves a half-written key, and the old key's file is gone with the rename.
    fn save(&self) -> Result<(), KeyError> {
        let write = |cause| KeyError::Write {
            path: self.path.clone(),
            cause,
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = self.path.with_extension("next");
        let text = Zeroizing::new(format!(
            "{MAGIC}\norigin {}\nepoch {}\nkey {}\n",
            self.origin,
            self.epoch,
            hex::encode(&*self.key)
        ));
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(write)?;
            file.write_all(text.as_bytes()).map_err(write)?;
            file.sync_all().map_err(write)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(write)?;
        if let Ok(dir) = std::fs::File::open(dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

fn parse_file(bytes: &[u8]) -> Result<(u64, u64, Secret), String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not text".to_string())?;
    let mut lines = text.lines();
    lines.next();
    let mut field = |name: &str| -> Result<String, String> {
        let line = lines.next().ok_or(format!("no {name} line"))?;
        line.strip_prefix(name)
            .and_then(|v| v.strip_prefix(' '))
            .map(str::to_string)
            .ok_or(format!("{line:?} where {name} was expected"))
    };
    let origin = field("origin")?
        .parse()
        .map_err(|_| "origin is not a number".to_string())?;
    let epoch = field("epoch")?
        .parse()
        .map_err(|_| "epoch is not a number".to_string())?;
    let key = Zeroizing::new(hex::decode(field("key")?).map_err(|_| "key is not hex".to_string())?);
    if key.len() != 32 {
        return Err("key is not 32 bytes".into());
    }
    Ok((origin, epoch, key))
}

/// What a verifier knows of the key.
pub enum Known {
    /// No key: the chain is plain SHA-256.
    Keyless,
    /// A static key.
    Static(Secret),
    /// A forward-secure key from epoch `base` on (0 with the initial key; the key file's
    /// epoch otherwise: earlier records cannot be checked with it).
    Evolving {
        origin: u64,
        base: u64,
        key: Secret,
        /// The last key computed, to walk forward without starting over.
        cache: std::cell::RefCell<(u64, Secret)>,
    },
}

impl std::fmt::Debug for Known {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Known::Keyless => f.write_str("Known::Keyless"),
            Known::Static(_) => f.write_str("Known::Static(redacted)"),
            Known::Evolving { base, .. } => {
                write!(f, "Known::Evolving(from epoch {base}, redacted)")
            }
        }
    }
}

/// A record's key cannot be known: its epoch is before what the verifier holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BeforeBase;

impl Known {
    /// `v1:ORIGIN:HEX`, as `passerelle audit keygen` printed it.
    pub fn initial(text: &str) -> Result<Known, KeyError> {
        let bad = || KeyError::Initial;
        let mut parts = text.trim().split(':');
        if parts.next() != Some("v1") {
            return Err(bad());
        }
        let origin = parts.next().and_then(|o| o.parse().ok()).ok_or_else(bad)?;
        let key = parts
            .next()
            .and_then(|k| hex::decode(k).ok())
            .filter(|k| k.len() == 32)
            .ok_or_else(bad)?;
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Known::evolving(origin, 0, Zeroizing::new(key)))
    }

    /// The key file as the writer left it: a static key, or a forward-secure key at its
    /// current epoch.
    pub fn file(path: &Path) -> Result<Known, KeyError> {
        Ok(match Key::load(path)? {
            Key::Static(k) => Known::Static(k),
            Key::Evolving(e) => Known::evolving(e.origin, e.epoch, e.key.clone()),
        })
    }

    fn evolving(origin: u64, base: u64, key: Secret) -> Known {
        Known::Evolving {
            origin,
            base,
            cache: std::cell::RefCell::new((base, key.clone())),
            key,
        }
    }

    /// The origin of a forward-secure key.
    pub fn origin(&self) -> Option<u64> {
        match self {
            Known::Evolving { origin, .. } => Some(*origin),
            _ => None,
        }
    }

    /// The first epoch this verifier can check.
    pub fn base(&self) -> Option<u64> {
        match self {
            Known::Evolving { base, .. } => Some(*base),
            _ => None,
        }
    }

    /// The chain value after `previous` for a record's bytes signed in `epoch`.
    pub fn chain_value(
        &self,
        epoch: Option<u64>,
        previous: &str,
        record: &[u8],
    ) -> Result<String, BeforeBase> {
        match self {
            Known::Keyless => Ok(value(None, previous, record)),
            Known::Static(k) => Ok(value(Some(k), previous, record)),
            Known::Evolving {
                base, key, cache, ..
            } => {
                // A record without an epoch cannot have been signed by this key: any value
                // will do to show it does not link.
                let epoch = epoch.unwrap_or(*base);
                if epoch < *base {
                    return Err(BeforeBase);
                }
                let mut cache = cache.borrow_mut();
                if cache.0 > epoch {
                    *cache = (*base, key.clone());
                }
                while cache.0 < epoch {
                    let next = step(&cache.1);
                    *cache = (cache.0 + 1, next);
                }
                Ok(value(Some(&cache.1), previous, record))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_moves_forward_with_the_minutes_and_erases_the_past_from_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.key");
        let t0 = UNIX_EPOCH + Duration::from_secs(1_764_763_200 + 17);
        let initial = Key::generate(&path, t0).unwrap();
        assert!(initial.starts_with("v1:1764763200:"), "{}", &initial[..20]);
        assert!(matches!(Key::generate(&path, t0), Err(KeyError::Exists(_))));
        let mut key = Key::load(&path).unwrap();
        assert_eq!(key.epoch(), Some(0));
        let k0 = key.bytes().to_vec();
        assert!(!key.advance(t0 + Duration::from_secs(30)).unwrap());
        assert!(key.advance(t0 + Duration::from_secs(3 * 60)).unwrap());
        assert_eq!(key.epoch(), Some(3));
        assert_eq!(key.bytes(), &*step(&step(&step(&k0))));
        let file = std::fs::read_to_string(&path).unwrap();
        assert!(file.contains("epoch 3\n"), "{file}");
        assert!(
            !file.contains(&hex::encode(&k0)),
            "the old key is still in the file"
        );
        assert!(!dir.path().join("audit.next").exists());
        // A clock stepped back leaves the key where it is.
        assert!(!key.advance(t0).unwrap());
        assert_eq!(key.epoch(), Some(3));
        // The verifier walks from the initial key to any epoch, and back.
        let known = Known::initial(&initial).unwrap();
        let at3 = known.chain_value(Some(3), "p", b"r").unwrap();
        assert_eq!(at3, super::value(Some(key.bytes()), "p", b"r"));
        assert_ne!(known.chain_value(Some(2), "p", b"r").unwrap(), at3);
        assert_eq!(known.chain_value(Some(3), "p", b"r").unwrap(), at3);
        // The file alone knows nothing before its epoch.
        let from_file = Known::file(&path).unwrap();
        assert_eq!(from_file.chain_value(Some(2), "p", b"r"), Err(BeforeBase));
        assert_eq!(from_file.chain_value(Some(3), "p", b"r").unwrap(), at3);
        assert!(!format!("{key:?}{known:?}").contains(&hex::encode(&k0)[..8]));
    }

    #[test]
    fn bad_keys_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, b"tiny").unwrap();
        assert!(Key::load(&short)
            .unwrap_err()
            .to_string()
            .contains("16 or more"));
        let cut = dir.path().join("cut");
        std::fs::write(&cut, format!("{MAGIC}\norigin 5\n")).unwrap();
        assert!(Key::load(&cut)
            .unwrap_err()
            .to_string()
            .contains("no epoch line"));
        for bad in ["v2:1:00", "v1:x:00", "v1:1:zz", "v1:1:0011"] {
            assert!(Known::initial(bad).is_err(), "{bad}");
        }
        // A key given where the initial key goes is not echoed back.
        let raw = "3f".repeat(32);
        let said = Known::initial(&raw).unwrap_err().to_string();
        assert!(!said.contains("3f3f"), "{said}");
    }
}
