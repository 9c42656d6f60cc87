//! One audit record, typed: what happened (`event`), the decision, the reason from the one
//! vocabulary, and the rest of the design's fields. Written as JSON and read back as such by
//! `report` and `audit verify`.

use serde::{Deserialize, Serialize};

use super::reason::Reason;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A request, a tunnel, or a connection refused before its request.
    #[default]
    Request,
    /// A configuration reload, accepted or refused.
    Reload,
    /// A refusal on the admin listener.
    Admin,
    /// The first record of a run: where the chain continues from.
    Start,
    /// The first record of a new file after rotation: the previous file's last chain value.
    Rotate,
    /// A UDP flow routed through the jump host.
    Udp,
    /// The gateway's own account, refused by the domain or a parent.
    Account,
    /// An audit forwarder's spool full (records refused or dropped), or room again.
    Forward,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allow,
    Deny,
}

/// The records' schema and version, in every format.
pub const SCHEMA: &str = "passerelle/2";

/// One audit record (the design's "Audit record"), in the order its fields are written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    #[serde(default)]
    pub seq: u64,
    /// The record's schema and its version ([`SCHEMA`]); absent from records written before it.
    #[serde(default)]
    pub schema: String,
    /// The run (one process's life) that wrote it: `seq` counts from 1 in each run.
    #[serde(default)]
    pub run: String,
    #[serde(default)]
    pub ts: String,
    #[serde(default)]
    pub event: EventKind,
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub client: Option<String>,
    /// The client's user; Passerelle does not authenticate clients, so always null for now.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
    /// `http` (forwarded), `connect` (tunnel), `udp`.
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub decision: Option<Decision>,
    #[serde(default)]
    pub reason: Option<Reason>,
    /// The reason in words (English, for the security team).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default)]
    pub flow: Option<String>,
    /// `direct`, or the parent's URL.
    #[serde(default)]
    pub route: Option<String>,
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub bytes_up: u64,
    #[serde(default)]
    pub bytes_down: u64,
    #[serde(default)]
    pub duration_ms: u64,
    #[serde(default)]
    pub sni: Option<String>,
    /// Account records: the account refused (`DOMAIN\\user`, `user@REALM`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Forward records: the forwarder (its `to`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarder: Option<String>,
    /// Start time in milliseconds since the Unix epoch (Squid's time field).
    #[serde(skip)]
    pub started_ms: u64,
    /// Reload records: the configuration digest before and after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest_before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest_after: Option<String>,
    /// Start and rotate records: the chain value this file or run continues (null: could not
    /// be read, `detail` says why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_from: Option<String>,
    /// With a forward-secure key: the epoch of the key that signed the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_epoch: Option<u64>,
    /// The tamper-evidence chain, written last (see `audit::chain`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
}

impl AuditEvent {
    pub fn is_deny(&self) -> bool {
        self.decision == Some(Decision::Deny)
    }

    /// Allowed, then failed on the way (DNS, connect, TLS, the parent, a timeout): a reason
    /// other than the client's own ending (the status page, the report and the SOC formats
    /// count failures by this).
    pub fn failed(&self) -> bool {
        self.decision == Some(Decision::Allow)
            && self.reason.is_some_and(|r| {
                !matches!(
                    r,
                    Reason::Aborted | Reason::ClientGone | Reason::IdleTimeout | Reason::Shutdown
                )
            })
    }
}
