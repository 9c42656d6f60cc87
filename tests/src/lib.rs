//! Shared parts of the end-to-end suites: origins, the gateway harness, curl, and the
//! peer proxies (Squid, the NTLM parent) the suites run against. Everything listens on
//! 127.0.0.1 only.
#![forbid(unsafe_code)]

pub mod browser;
pub mod collectors;
pub mod harness;
pub mod netns;
pub mod origin;
pub mod peers;
pub mod schemas;
