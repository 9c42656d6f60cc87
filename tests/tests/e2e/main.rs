//! End-to-end suites, one binary, a module per suite.
#![forbid(unsafe_code)]

mod audit_forward;
mod cli;
mod clients;
mod core;
mod credentials;
mod docs;
mod durability;
mod hostile;
mod kerberos;
mod operations;
mod parent_faults;
mod qos;
mod udp;
mod upstream;
