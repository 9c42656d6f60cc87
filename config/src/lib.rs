//! Passerelle's configuration: the TOML schema with its defaults, the embedded Covotem
//! profile, loading (file, then `PASSERELLE__SECTION__KEY` environment overrides),
//! validation with every problem reported by key path, and the compiled [`Policy`].
//! Pure: reads files and the injected environment, opens no socket.

pub mod host;
pub mod policy;
pub mod raw;
pub mod routing;
mod validate;

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
];

/// A validated configuration, ready to run.
#[derive(Debug)]
pub struct Config {
    pub policy: Policy,
    pub listen: Listen,
    pub upstreams: Vec<Upstream>,
    pub pac: Pac,
    pub resolve: Resolve,
    pub limits: Limits,
    pub audit: Audit,
    pub admin: Admin,
    /// SHA-256 of the sources (file and overrides), for reload records.
    pub digest: String,
    pub source: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Listen {
    pub proxy: Vec<SocketAddr>,
    pub via: String,
    pub admin: Option<SocketAddr>,
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
    /// For Negotiate: set with `auth = "negotiate"`, or `auto` with Kerberos credentials.
    pub kerberos: Option<Kerberos>,
    pub workstation: String,
    pub auth_backoff: Duration,
    pub down_cooldown: Duration,
    /// A parent quiet for this long gets a health probe (TCP, TLS).
    pub health_interval: Duration,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditFormat {
    Json,
    /// Squid's native access.log line.
    Squid,
}

#[derive(Debug, Clone)]
pub struct Audit {
    pub sink: AuditSink,
    pub format: AuditFormat,
    /// Records waiting for the writer, at most.
    pub queue: usize,
    /// `on_full = "drop"`: when the queue is full, count and drop instead of waiting.
    pub drop_when_full: bool,
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
pub fn load(path: Option<&Path>, env: &Env) -> Result<Config, ConfigError> {
    let text = match path {
        Some(path) => Some(
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?,
        ),
        None => None,
    };
    load_str(text.as_deref(), path, env)
}

/// [`load`] with the file's text already read (`path` only names it in messages).
pub fn load_str(text: Option<&str>, path: Option<&Path>, env: &Env) -> Result<Config, ConfigError> {
    let name = path.map_or("the configuration".to_string(), |p| p.display().to_string());
    let mut digest = Sha256::new();
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
    let mut problems: Vec<Problem> = unknown
        .into_iter()
        .map(|key| {
            let message = match env_keys.get(&key) {
                Some(var) => format!("unknown key (from the environment variable {var})"),
                None => "unknown key".to_string(),
            };
            Problem { path: key, message }
        })
        .collect();
    let raw = match raw {
        Ok(raw) => raw,
        Err(e) => {
            problems.push(Problem {
                path: key_path(&e.path().to_string()),
                message: e.inner().to_string(),
            });
            return Err(ConfigError::Invalid(problems));
        }
    };
    let digest = hex::encode(digest.finalize());
    match validate::compile(raw, env, path.map(Path::to_path_buf), digest) {
        Ok(config) if problems.is_empty() => Ok(config),
        Ok(_) => Err(ConfigError::Invalid(problems)),
        Err(more) => {
            problems.extend(more);
            Err(ConfigError::Invalid(problems))
        }
    }
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
