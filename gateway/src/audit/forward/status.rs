//! A forwarder's standing as the status page, the metrics and `doctor` show it: a leaf, so
//! that the metrics read it without importing the audit.

use serde::Serialize;

/// What the status page, the metrics and `doctor` show of a forwarder.
#[derive(Debug, Clone, Serialize)]
pub struct ForwarderStatus {
    pub name: String,
    pub format: &'static str,
    /// Streams: a session with the collector is open now.
    pub connected: Option<bool>,
    /// Records in the spool, not yet delivered.
    pub waiting: u64,
    pub spool_bytes: u64,
    /// Age of the oldest record waiting, in seconds.
    pub oldest_age_s: Option<u64>,
    pub delivered: u64,
    /// Records not spooled because the spool was full (`on_full = "refuse_new"`).
    pub refused: u64,
    /// Records dropped from a full spool (`on_full = "drop_oldest"`).
    pub dropped: u64,
    /// Datagrams not sent.
    pub lost: u64,
    pub last_error: Option<String>,
    /// Seconds since the last error.
    pub last_error_age_s: Option<u64>,
}
