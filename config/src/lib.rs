//! Passerelle's configuration: the TOML schema with its defaults, the embedded Covotem
//! profile, loading (file, then `PASSERELLE__SECTION__KEY` environment overrides),
//! validation with every problem reported by key path, and the compiled [`Policy`].
//! Pure: reads files and the injected environment, opens no socket.
#![forbid(unsafe_code)]

pub mod host;
pub mod policy;
pub mod raw;
pub mod routing;
mod validate;
mod vocabulary;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use passerelle_auth::{AuthMode, Credentials};
use sha2::{Digest, Sha256};

pub use host::Host;
pub use policy::{
    ClientInfo, Decision, DenyReason, Environment, Flow, Kind, Policy, Route, Target,
};
pub use routing::DirectPattern;
pub use validate::Env;

/// The commented default configuration: printed by `print-default-config`, and the base layer
/// under every loaded file, so defaults live in one place.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// Environment variable prefix for overrides: `PASSERELLE__LISTEN__PROXY`.
pub const ENV_PREFIX: &str = "PASSERELLE__";

/// Keys whose environment value is a comma-separated list.
const LIST_KEYS: &[&str] = &[
    "environments",
    "listen.proxy",
    "clients.allow",
    "routing.direct",
    "pac.direct",
    "resolve.connect_to",
    "admin.allow",
    "listen.proxy_protocol_from",
];

/// A validated configuration, ready to run.
#[derive(Debug)]
pub struct Config {
    /// Valid, but probably not what was meant: said by `check-config` and at start.
    pub warnings: Vec<Problem>,
    pub policy: Policy,
    pub listen: Listen,
    pub upstreams: Vec<Upstream>,
    pub pac: Pac,
    pub resolve: Resolve,
    pub limits: Limits,
    pub audit: Audit,
    pub admin: Admin,
    pub pages: Pages,
    pub udp: Udp,
    pub site: Site,
    /// SHA-256 of the sources (file and overrides), for reload records.
    pub digest: String,
    pub source: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Listen {
    pub proxy: Vec<SocketAddr>,
    pub via: String,
    pub admin: Option<SocketAddr>,
    /// Load balancers whose connections start with a PROXY protocol header (v1 or v2), which
    /// gives the real client's address; required from them, refused from others.
    pub proxy_protocol_from: Vec<ipnet::IpNet>,
}

impl Listen {
    /// Does a connection from `peer` start with a PROXY protocol header?
    pub fn expects_proxy_protocol(&self, peer: std::net::IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.proxy_protocol_from
            .iter()
            .any(|net| net.contains(&peer))
    }
}

/// Who may use the admin listener: the security team's and monitoring's hosts, not the
/// workstations (they use the proxy; they do not read `/flows` or `/metrics`).
#[derive(Debug, Clone)]
pub struct Admin {
    pub allow: Vec<ipnet::IpNet>,
}

impl Admin {
    pub fn allows(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.allow.iter().any(|net| net.contains(&ip))
    }
}

/// The pages a workstation's user reads when the gateway answers instead of the site.
#[derive(Debug, Clone)]
pub struct Pages {
    /// Whom to contact, as free text (`Service informatique, poste 1234`).
    pub contact: String,
    /// The language when the client's `Accept-Language` names neither French nor English.
    pub language: PageLanguage,
}

vocabulary::vocabulary! {
    pub enum PageLanguage ("a language of the pages") {
        Fr,
        En,
    }
}

/// The UDP flows the jump host routes (`passerelle firewall`).
#[derive(Debug, Clone)]
pub struct Udp {
    /// Follow the kernel's connection tracking for them and audit each flow.
    pub audit: bool,
}

/// The site's capacity, for the status page and doctor.
#[derive(Debug, Clone, Default)]
pub struct Site {
    pub uplink_mbit: Option<u32>,
    pub workstations: Option<u32>,
}

/// A DSCP written as a class name or a number (`"AF41"`, `"ef"`, `"46"`); `"none"` is no
/// mark.
pub fn dscp_value(text: &str) -> Result<Option<u8>, String> {
    let upper = text.trim().to_ascii_uppercase();
    let value = match upper.as_str() {
        "NONE" | "" => return Ok(None),
        "EF" => 46,
        "VA" => 44,
        "LE" => 1,
        "DF" | "BE" => 0,
        class => {
            let parsed = if let Some(n) = class.strip_prefix("CS") {
                n.parse::<u8>().ok().filter(|n| *n <= 7).map(|n| n * 8)
            } else if let Some(n) = class.strip_prefix("AF") {
                let digits: Vec<u8> = n.bytes().map(|b| b.wrapping_sub(b'0')).collect();
                match digits[..] {
                    [c @ 1..=4, d @ 1..=3] => Some(c * 8 + d * 2),
                    _ => None,
                }
            } else {
                class.parse::<u8>().ok().filter(|n| *n < 64)
            };
            parsed.ok_or_else(|| {
                format!(
                    "{text:?} is not a DSCP (EF, AF11..AF43, CS0..CS7, LE, a number 0-63, or none)"
                )
            })?
        }
    };
    Ok(Some(value))
}

/// What `/proxy.pac` tells workstations.
#[derive(Debug, Clone)]
pub struct Pac {
    /// `host:port` to announce; empty: derived from the listener or the request.
    pub proxy: String,
    /// DIRECT for the workstations, after localhost, 127.0.0.1 and `<local>`.
    pub direct: Vec<DirectPattern>,
}

/// A parent proxy. `url` is its normal form, used in logs and the audit's `route`. Two equal
/// `Upstream`s are the same parent with the same account: a reload keeps what was learnt.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    pub url: String,
    pub host: Host,
    pub port: u16,
    pub tls: bool,
    pub ca_file: Option<PathBuf>,
    pub auth: AuthMode,
    /// For NTLM and Basic.
    pub credentials: Option<Credentials>,
    /// The file the secret came from (`password_file`, `nt_hash_file`): read again when it is
    /// rewritten, without a reload.
    pub secret_file: Option<SecretFile>,
    /// For Negotiate: set with `auth = "negotiate"`, or `auto` with Kerberos credentials.
    pub kerberos: Option<Kerberos>,
    pub workstation: String,
    /// A refused secret waits this long before it goes again unchanged, doubling up to
    /// `auth_backoff_max`.
    pub auth_backoff: Duration,
    pub auth_backoff_max: Duration,
    pub down_cooldown: Duration,
    /// A parent quiet for this long gets a health probe (TCP, TLS).
    pub health_interval: Duration,
}

/// A file holding a parent's secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretFile {
    pub path: PathBuf,
    /// `nt_hash_file` (else a password file).
    pub nt_hash: bool,
}

impl SecretFile {
    /// The secret the file holds now.
    pub fn read(&self) -> Result<passerelle_auth::Secret, passerelle_auth::CredentialsError> {
        if self.nt_hash {
            passerelle_auth::Secret::read_nt_hash_file(&self.path)
        } else {
            passerelle_auth::Secret::read_password_file(&self.path)
        }
    }
}

/// The gateway's Kerberos identity toward a parent.
#[derive(Debug, Clone, PartialEq)]
pub struct Kerberos {
    /// `user@REALM`; `None`: the keytab's or the credential cache's own.
    pub principal: Option<String>,
    pub source: KerberosSource,
    /// The parent's service, `HTTP@host`.
    pub spn: String,
    /// `negotiate_fallback = "ntlm"`: NTLM when Kerberos fails on our side.
    pub fallback_ntlm: bool,
}

/// Where the Kerberos credentials come from, in the order of preference.
#[derive(Debug, Clone, PartialEq)]
pub enum KerberosSource {
    Keytab(PathBuf),
    Password(passerelle_auth::Secret),
    /// The process's credential cache (`KRB5CCNAME`).
    Cache,
}

/// Static name-to-address overrides, consulted before DNS.
#[derive(Debug, Clone, Default)]
pub struct Resolve {
    pub connect_to: HashMap<(Host, u16), SocketAddr>,
}

impl Resolve {
    pub fn lookup(&self, host: &Host, port: u16) -> Option<SocketAddr> {
        self.connect_to.get(&(host.clone(), port)).copied()
    }
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub header_timeout: Duration,
    pub shutdown_grace: Duration,
    pub requests_per_second: u32,
    pub burst: u32,
    pub max_connections: u32,
    pub max_connections_per_client: u32,
    pub max_header_bytes: u32,
    pub max_uri_bytes: u32,
    pub sni_timeout: Duration,
    /// The threads serving connections (at start; a reload cannot change them).
    pub worker_threads: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditSink {
    Stdout,
    File(PathBuf),
    Syslog(SyslogTarget),
}

/// Where syslog datagrams go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyslogTarget {
    Unix(PathBuf),
    Udp(SocketAddr),
}

vocabulary::vocabulary! {
    pub enum AuditFormat ("a format") {
        Json,
        /// Squid's native access.log line.
        Squid,
        /// Elastic Common Schema.
        Ecs,
        /// OCSF, HTTP Activity (class 4002).
        Ocsf,
    }
}

vocabulary::vocabulary! {
    /// What a forwarder's full spool does with a new record.
    pub enum SpoolFull ("a choice") {
        /// The new record is not spooled (it stays in the local record), said and counted.
        RefuseNew,
        /// The oldest records waiting are dropped to make room, said and counted.
        DropOldest,
    }
}

/// Where a forwarder sends the audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardTo {
    /// RELP (rsyslog's imrelp): each record acknowledged by the collector; `tls` for RELP
    /// over TLS.
    Relp { host: Host, port: u16, tls: bool },
    /// Syslog over TLS (RFC 5425), octet-counted.
    Tls { host: Host, port: u16 },
    /// Syslog over TCP (RFC 6587), octet-counted.
    Tcp { host: Host, port: u16 },
    /// Syslog datagrams over UDP (RFC 5426).
    Udp { host: Host, port: u16 },
    /// Syslog datagrams to a local Unix socket.
    Unix(PathBuf),
}

impl ForwardTo {
    pub fn uses_tls(&self) -> bool {
        matches!(
            self,
            ForwardTo::Relp { tls: true, .. } | ForwardTo::Tls { .. }
        )
    }

    /// Streams keep a spool on disk; datagrams are sent as they come.
    pub fn is_stream(&self) -> bool {
        matches!(
            self,
            ForwardTo::Relp { .. } | ForwardTo::Tls { .. } | ForwardTo::Tcp { .. }
        )
    }
}

/// TLS toward a collector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardTls {
    /// The CA the collector's certificate is checked against (none: the system's roots).
    pub ca_file: Option<PathBuf>,
    /// Our certificate and key, for collectors that authenticate their clients (imrelp does).
    pub client: Option<(PathBuf, PathBuf)>,
    /// The name the collector's certificate must carry (default: the host of `to`).
    pub server_name: String,
}

/// A stream forwarder's persistent spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spooling {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub on_full: SpoolFull,
}

/// `[[audit.forward]]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// `to` as written: the forwarder's name in logs, metrics and the status page.
    pub name: String,
    pub to: ForwardTo,
    pub format: AuditFormat,
    pub tls: Option<ForwardTls>,
    pub spool: Option<Spooling>,
}

vocabulary::vocabulary! {
    /// What the audit does when its queue is full.
    pub enum OnFull ("a choice") {
        /// New requests wait: nothing goes unrecorded.
        Block,
        /// New requests go on unrecorded, counted in `passerelle_audit_dropped`.
        Drop,
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Audit {
    pub sink: AuditSink,
    pub format: AuditFormat,
    /// Records waiting for the writer, at most.
    pub queue: usize,
    pub on_full: OnFull,
    /// The key of the chain's HMAC (without it, plain SHA-256): a static key, or one that
    /// evolves (`passerelle audit keygen`'s format).
    pub key_file: Option<PathBuf>,
    /// Destinations beyond the local record.
    pub forward: Vec<Forward>,
}

/// One thing wrong with a configuration, at a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not valid TOML: {message}")]
    Syntax { path: String, message: String },
    #[error("invalid configuration:\n{}", list(.0))]
    Invalid(Vec<Problem>),
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigError {
    pub fn problems(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid(list) => list.iter().map(Problem::to_string).collect(),
            other => vec![other.to_string()],
        }
    }
}

/// Loads the configuration: the defaults, then `path` (if any), then the `PASSERELLE__*`
/// overrides found in `env`, validated and compiled. `env` is also where `password_env`
/// secrets are read from.
/// How much of the outside world loading reads.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Read the secrets (`password_env`, `password_file`, `nt_hash_file`, `keytab_file`).
    /// Off, their keys are checked but not their contents: a configuration can be validated
    /// where the secrets are not (a build machine, the test suite, an admin's laptop).
    pub secrets: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options { secrets: true }
    }
}

pub fn load(path: Option<&Path>, env: &Env) -> Result<Config, ConfigError> {
    load_with(path, env, Options::default())
}

/// [`load`] with [`Options`].
pub fn load_with(path: Option<&Path>, env: &Env, options: Options) -> Result<Config, ConfigError> {
    let text = match path {
        Some(path) => Some(
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?,
        ),
        None => None,
    };
    load_text(text.as_deref(), path, env, options)
}

/// [`load`] with the file's text already read (`path` only names it in messages).
pub fn load_str(text: Option<&str>, path: Option<&Path>, env: &Env) -> Result<Config, ConfigError> {
    load_text(text, path, env, Options::default())
}

fn load_text(
    text: Option<&str>,
    path: Option<&Path>,
    env: &Env,
    options: Options,
) -> Result<Config, ConfigError> {
    let name = path.map_or("the configuration".to_string(), |p| p.display().to_string());
    // The digest covers everything that makes the configuration: the defaults (they change
    // with the version), the file, the overrides.
    let mut digest = Sha256::new();
    digest.update(DEFAULT_TOML.as_bytes());
    let mut builder = config::Config::builder().add_source(config::File::from_str(
        DEFAULT_TOML,
        config::FileFormat::Toml,
    ));
    if let Some(text) = text {
        // toml's own parser gives line and column; config's would not.
        toml::from_str::<toml::Table>(text).map_err(|e| ConfigError::Syntax {
            path: name.clone(),
            message: e.to_string(),
        })?;
        digest.update(text.as_bytes());
        builder = builder.add_source(config::File::from_str(text, config::FileFormat::Toml));
    }
    let mut env_keys = HashMap::new();
    for (var, value) in env.iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)) {
        let key = var[ENV_PREFIX.len()..].to_lowercase().replace("__", ".");
        digest.update(format!("\n{var}={value}").as_bytes());
        env_keys.insert(key.clone(), var.clone());
        builder = if LIST_KEYS.contains(&key.as_str()) {
            let items: Vec<String> = value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            builder.set_override(key, items)
        } else {
            builder.set_override(key, value.as_str())
        }
        .map_err(|e| invalid(var, e.to_string()))?;
    }
    let merged = builder.build().map_err(|e| ConfigError::Syntax {
        path: name.clone(),
        message: e.to_string(),
    })?;

    let mut unknown = Vec::new();
    let raw: Result<raw::RawConfig, _> = serde_path_to_error::deserialize(
        serde_ignored::Deserializer::new(merged, &mut |path: serde_ignored::Path<'_>| {
            unknown.push(key_path(&path.to_string()))
        }),
    );
    let known = known_keys();
    let mut problems: Vec<Problem> = unknown
        .into_iter()
        .map(|key| {
            let mut message = match env_keys.get(&key) {
                Some(var) => format!("unknown key (from the environment variable {var})"),
                None => "unknown key".to_string(),
            };
            if let Some(near) = nearest(&key, &known) {
                message.push_str(&format!("; did you mean {near}?"));
            }
            Problem { path: key, message }
        })
        .collect();
    let raw = match raw {
        Ok(raw) => raw,
        Err(e) => {
            problems.push(Problem {
                path: key_path(&e.path().to_string()),
                message: serde_words(&e.inner().to_string()),
            });
            return Err(ConfigError::Invalid(problems));
        }
    };
    // The loader converts "443" into 443 and 1.5 into 2 for us: what the file says must have
    // the type it means.
    if let (Some(text), Ok(read)) = (text, toml::Value::try_from(&raw)) {
        if let Ok(written) = toml::from_str::<toml::Table>(text) {
            mistyped("", &toml::Value::Table(written), &read, &mut problems);
        }
    }
    let digest = hex::encode(digest.finalize());
    match validate::compile(raw, env, path.map(Path::to_path_buf), digest, options) {
        Ok(config) if problems.is_empty() => Ok(config),
        Ok(_) => Err(ConfigError::Invalid(problems)),
        Err(more) => {
            // A value of the wrong type is said once, as that.
            let said: std::collections::HashSet<String> =
                problems.iter().map(|p| p.path.clone()).collect();
            problems.extend(more.into_iter().filter(|p| !said.contains(&p.path)));
            Err(ConfigError::Invalid(problems))
        }
    }
}

/// A serde message in the configuration's words: no Rust type names, no key repeated.
fn serde_words(message: &str) -> String {
    let mut out = message.to_string();
    if let Some(at) = out.find(" for key `") {
        out.truncate(at);
    }
    let mut words = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(at) = rest.find("struct Raw") {
        words.push_str(&rest[..at]);
        words.push_str("a table");
        rest =
            rest[at + "struct Raw".len()..].trim_start_matches(|c: char| c.is_ascii_alphanumeric());
    }
    words.push_str(rest);
    words
        .replace("i64", "an integer")
        .replace("u64", "an integer")
        .replace("sequence", "a list")
        .replace("type: map", "type: a table")
        .replace("a a list", "a list")
}

/// What a value is, in the words a configuration's reader uses.
fn kind(value: &toml::Value) -> &'static str {
    match value {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "a whole number",
        toml::Value::Float(_) => "a number with a fraction",
        toml::Value::Boolean(_) => "true or false",
        toml::Value::Datetime(_) => "a date",
        toml::Value::Array(_) => "a list",
        toml::Value::Table(_) => "a table",
    }
}

/// Each value of the file whose type is not the one the configuration read there.
fn mistyped(path: &str, written: &toml::Value, read: &toml::Value, problems: &mut Vec<Problem>) {
    use toml::Value::*;
    let at = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match (written, read) {
        (Table(w), Table(r)) => {
            for (key, value) in w {
                if let Some(read) = r.get(key) {
                    mistyped(&at(key), value, read, problems);
                }
            }
        }
        (Array(w), Array(r)) => {
            for (i, (value, read)) in w.iter().zip(r).enumerate() {
                mistyped(&format!("{path}[{i}]"), value, read, problems);
            }
        }
        // A list key written as one value.
        (w, Array(r)) if !matches!(w, Array(_) | Table(_)) => {
            if let Some(first) = r.first() {
                mistyped(path, w, first, problems);
            }
        }
        (Integer(_), Integer(_))
        | (Float(_), Float(_))
        | (Integer(_), Float(_))
        | (String(_), String(_))
        | (Boolean(_), Boolean(_))
        | (Datetime(_), Datetime(_)) => {}
        (w, r) => problems.push(Problem {
            path: path.to_string(),
            message: format!(
                "{w} is {}, where {} is expected{}",
                kind(w),
                kind(r),
                match (w, r) {
                    (String(s), Integer(_)) => format!(" (write {s} without quotes)"),
                    (Integer(n), String(_)) => format!(" (write \"{n}\" if you mean it)"),
                    _ => std::string::String::new(),
                }
            ),
        }),
    }
}

/// Every key the configuration takes, as `section.key` (`flows.id` for array tables), read
/// from the commented default file, which documents each of them.
pub fn known_keys() -> Vec<String> {
    let mut keys = Vec::new();
    let mut section = String::new();
    for line in DEFAULT_TOML.lines() {
        let line = line.trim_start_matches('#').trim();
        if let Some(header) = line.strip_prefix('[') {
            let name = header
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("");
            if !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'.')
            {
                section = name.to_string();
                keys.push(section.clone());
            }
            continue;
        }
        let Some((key, _)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            keys.push(if section.is_empty() {
                key.to_string()
            } else {
                format!("{section}.{key}")
            });
        }
    }
    keys.sort();
    keys.dedup();
    keys
}

/// The known key nearest to `unknown` (`limits.conect_timeout` → `limits.connect_timeout`),
/// when one is close enough to be what was meant.
fn nearest(unknown: &str, known: &[String]) -> Option<String> {
    // `flows[2].hosst` is looked up as `flows.hosst`.
    let bare: String = {
        let mut out = String::new();
        let mut skip = false;
        for c in unknown.chars() {
            match c {
                '[' => skip = true,
                ']' => skip = false,
                c if !skip => out.push(c),
                _ => {}
            }
        }
        out
    };
    let (best, distance) = known
        .iter()
        .map(|k| (k, edit_distance(&bare, k)))
        .min_by_key(|(_, d)| *d)?;
    let budget = (bare.len() / 6).clamp(1, 3);
    (distance > 0 && distance <= budget).then(|| {
        // Give it back in the form the user wrote (`flows[2].hosts`).
        let prefix = unknown.rsplit_once('.').map_or("", |(p, _)| p);
        let last = best.rsplit('.').next().unwrap_or(best);
        if prefix.is_empty() || !unknown.contains('.') || !best.contains('.') {
            best.clone()
        } else if bare.rsplit_once('.').map(|(p, _)| p) == best.rsplit_once('.').map(|(p, _)| p) {
            format!("{prefix}.{last}")
        } else {
            best.clone()
        }
    })
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

fn invalid(path: &str, message: String) -> ConfigError {
    ConfigError::Invalid(vec![Problem {
        path: path.to_string(),
        message,
    }])
}

/// serde's paths say `flows.2.ports.0`; people say `flows[2].ports[0]`.
fn key_path(serde_path: &str) -> String {
    let mut out = String::new();
    for part in serde_path.split('.') {
        if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    out
}

#[cfg(test)]
mod tests;
