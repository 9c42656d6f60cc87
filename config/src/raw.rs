//! The configuration as written: serde types mirroring the TOML, lenient in their value
//! types so that validation can report every problem with its key path.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A list key written as one value (`proxy = "0.0.0.0:3128"`) or as a list.
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
}

fn one_or_many_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    one_or_many(d).map(Some)
}

/// A secret written in the file: refused by validation, read only to be dropped (zeroized).
#[derive(Debug)]
pub struct Refused;

/// Serialized only to compare the types written with the types read: never its value.
impl Serialize for Refused {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("")
    }
}

impl<'de> Deserialize<'de> for Refused {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Refused, D::Error> {
        let _ = zeroize::Zeroizing::new(String::deserialize(d)?);
        Ok(Refused)
    }
}

#[derive(Debug, Deserialize, Serialize)]
pub struct RawConfig {
    pub profile: String,
    #[serde(deserialize_with = "one_or_many")]
    pub environments: Vec<String>,
    pub listen: RawListen,
    #[serde(default)]
    pub clients: RawClients,
    #[serde(default)]
    pub flows: Vec<RawFlow>,
    pub routing: RawRouting,
    pub pac: RawPac,
    #[serde(default)]
    pub upstream: Vec<RawUpstream>,
    pub resolve: RawResolve,
    pub limits: RawLimits,
    pub audit: RawAudit,
    pub admin: RawAdmin,
    pub pages: RawPages,
    pub udp: RawUdp,
    pub qos: RawQos,
    pub site: RawSite,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct RawUdp {
    pub audit: bool,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct RawQos {
    /// Flow id → DSCP, over the flows' own `dscp` (`"none"` removes a mark).
    #[serde(default)]
    pub dscp: std::collections::BTreeMap<String, RawDscp>,
}

/// A DSCP as written: a class name (`"AF41"`) or a number.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum RawDscp {
    Number(i64),
    Name(String),
}

#[derive(Debug, Deserialize, Serialize)]
pub struct RawSite {
    pub uplink_mbit: Option<i64>,
    pub workstations: Option<i64>,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct RawPages {
    pub contact: String,
    pub language: String,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct RawAdmin {
    #[serde(deserialize_with = "one_or_many")]
    pub allow: Vec<String>,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct RawListen {
    #[serde(deserialize_with = "one_or_many")]
    pub proxy: Vec<String>,
    pub via: String,
    pub admin: Option<String>,
    #[serde(deserialize_with = "one_or_many")]
    pub proxy_protocol_from: Vec<String>,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct RawPac {
    pub proxy: String,
    #[serde(deserialize_with = "one_or_many")]
    pub direct: Vec<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct RawClients {
    #[serde(default, deserialize_with = "one_or_many_opt")]
    pub allow: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct RawFlow {
    pub id: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub ips: Vec<String>,
    #[serde(default)]
    pub ports: Vec<i64>,
    pub tls_ports: Option<Vec<i64>>,
    pub http_ports: Option<Vec<i64>>,
    pub environment: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub allow_private: bool,
    pub parent_auth: Option<bool>,
    pub idle_timeout: Option<String>,
    pub sni_check: Option<bool>,
    #[serde(default)]
    pub allow_no_sni: bool,
    #[serde(default)]
    pub udp_ports: Vec<i64>,
    pub dscp: Option<RawDscp>,
    #[serde(default)]
    pub source: String,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct RawProfile {
    pub flows: Vec<RawFlow>,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct RawRouting {
    pub default: Option<String>,
    #[serde(deserialize_with = "one_or_many")]
    pub direct: Vec<String>,
    pub bypass_covotem_server: bool,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct RawUpstream {
    pub url: String,
    #[serde(default = "auth_none")]
    pub auth: String,
    pub user: Option<String>,
    pub domain: Option<String>,
    /// Refused with a message: secrets do not belong in the config file. Never kept.
    pub password: Option<Refused>,
    pub password_env: Option<String>,
    pub password_file: Option<String>,
    pub nt_hash_file: Option<String>,
    pub keytab_file: Option<String>,
    pub spn: Option<String>,
    pub negotiate_fallback: Option<String>,
    pub workstation: Option<String>,
    pub ca_file: Option<String>,
    pub auth_backoff: Option<String>,
    pub auth_backoff_max: Option<String>,
    pub down_cooldown: Option<String>,
    pub health_interval: Option<String>,
}

fn auth_none() -> String {
    "none".to_string()
}

#[derive(Debug, Deserialize, Serialize)]
pub struct RawResolve {
    #[serde(deserialize_with = "one_or_many")]
    pub connect_to: Vec<String>,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct RawLimits {
    pub connect_timeout: String,
    pub idle_timeout: String,
    pub header_timeout: String,
    pub shutdown_grace: String,
    pub requests_per_second: i64,
    pub burst: i64,
    pub max_connections: i64,
    pub max_connections_per_client: i64,
    pub max_header_bytes: i64,
    pub max_uri_bytes: i64,
    pub sni_timeout: String,
    pub worker_threads: i64,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct RawAudit {
    pub sink: String,
    pub path: Option<String>,
    pub syslog: String,
    pub format: String,
    pub queue: i64,
    pub on_full: String,
    pub key_file: Option<String>,
    #[serde(default)]
    pub forward: Vec<RawForward>,
}

/// `[[audit.forward]]`: one destination of the audit beyond the local record.
#[derive(Debug, Deserialize, Serialize)]
pub struct RawForward {
    pub to: String,
    pub format: Option<String>,
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub server_name: Option<String>,
    pub spool_dir: Option<String>,
    pub spool_max: Option<String>,
    pub on_full: Option<String>,
}
