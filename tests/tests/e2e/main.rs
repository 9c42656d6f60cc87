//! End-to-end suites, one binary, a module per suite.

mod cli;
mod core;
mod durability;
mod hostile;
mod kerberos;
mod operations;
mod parent_faults;
mod qos;
mod udp;
mod upstream;
