//! The audit record's types: one typed record ([`AuditEvent`]) and its closed vocabularies
//! (`event`, `decision`, the [`Reason`]). A leaf: the writer, the metrics, the status page and
//! the report all read these types, and they import nothing of the gateway.

mod event;
mod reason;

pub use event::{AuditEvent, Decision, EventKind, SCHEMA};
pub use reason::{Lang, Reason};
