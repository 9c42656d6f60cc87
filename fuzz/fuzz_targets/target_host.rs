//! Hosts and direct patterns: parsing never panics, and a parsed host prints back to a form
//! that parses to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use passerelle_config::{DirectPattern, Host};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(host) = Host::parse(text) {
        let again = Host::parse(&host.to_string()).expect("a printed host parses");
        assert_eq!(host, again);
        if let Ok(pattern) = DirectPattern::parse(text) {
            let _ = pattern.matches(&host);
        }
    }
    let _ = DirectPattern::parse(text);
});
